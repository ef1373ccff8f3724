"""The ``webhooks:`` config section: parsed into frozen, typed settings or refused with its path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from meshscale.configvalues import parse_duration
from meshscale.errors import ConfigError

SECTION = "webhooks"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...] = ()  # every event goes to every URL
    secret: str = ""  # HMAC-SHA256 key for the X-Meshscale-Signature header
    timeout: float = 5.0  # seconds for one delivery attempt (connect + send + status line)
    max_attempts: int = 5  # then the event is given up (logged, counted)
    backoff: float = 0.5  # first retry delay in seconds; doubles per attempt, capped at 30s
    queue_size: int = 1000  # events waiting per URL; when full, new events are dropped


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(path, f"expected a whole number >= 1, got {value!r}")
    return value


def parse(raw: Mapping[str, Any], path: str) -> WebhookSettings:
    known = {f.name for f in fields(WebhookSettings)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    urls = raw.get("urls", [])
    if not isinstance(urls, list):
        raise ConfigError(f"{path}.urls", "expected a list of http(s) URLs")
    for i, url in enumerate(urls):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{path}.urls[{i}]", f"expected an http(s) URL, got {url!r}")
    secret = raw.get("secret", "")
    if not isinstance(secret, str):
        raise ConfigError(f"{path}.secret", "expected a string")
    if urls and not secret:
        # Receivers must be able to tell our events from anyone else's POSTs.
        raise ConfigError(f"{path}.secret", "required when urls are set")
    defaults = WebhookSettings()
    timeout = float(parse_duration(raw.get("timeout", defaults.timeout), f"{path}.timeout"))
    backoff = float(parse_duration(raw.get("backoff", defaults.backoff), f"{path}.backoff"))
    if timeout <= 0:
        raise ConfigError(f"{path}.timeout", "must be more than 0")
    return WebhookSettings(
        urls=tuple(urls),
        secret=secret,
        timeout=timeout,
        max_attempts=_positive_int(raw.get("max_attempts", defaults.max_attempts),
                                   f"{path}.max_attempts"),
        backoff=backoff,
        queue_size=_positive_int(raw.get("queue_size", defaults.queue_size),
                                 f"{path}.queue_size"),
    )
