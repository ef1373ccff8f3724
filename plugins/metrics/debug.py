"""``/debug/`` JSON pages: what the server holds, read through ServerContext only.

The config page must be safe to paste into a bug report, so every value whose key names a secret
is replaced, and URLs lose what in them is secret (meshscale.redact).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

from meshscale.context import ServerContext
from meshscale.redact import REDACTED
from meshscale.redact import url as redact_url

# "private_key_path" names a file, not a secret; "mesh_key", "secret", "api_key" are secrets.
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|(^|_)key)$", re.I)


def _is_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any, key: str = "", secret_paths: bool = False) -> Any:
    """A JSON-ready copy of ``value`` with secrets replaced (dataclasses become mappings).

    Under ``nameservers`` URL paths are secrets too (DNS-over-HTTPS profile IDs)."""
    if key and _is_secret(key) and value not in ("", None, 0):
        return REDACTED
    secret_paths = secret_paths or key == "nameservers"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: redact(getattr(value, f.name), f.name, secret_paths)
                for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k), secret_paths) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v, key, secret_paths) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str):
        return redact_url(value, secret_paths)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, PurePath):
        return str(value)
    return repr(value)


def config_page(server: ServerContext) -> Any:
    return redact(server.config)


def policy_page(server: ServerContext) -> Any:
    cfg = server.config.policy
    return {"mode": cfg.mode, "engine": cfg.engine, "path": cfg.path,
            "policy": server.policy_text}


PAGES: Mapping[str, Callable[[ServerContext], Any]] = {
    "config": config_page,
    "nodes": lambda s: list(s.nodes()),
    "sessions": lambda s: list(s.map_sessions()),
    "policy": policy_page,
    "stats": lambda s: dict(s.stats()),
}


def render(server: ServerContext, page: str) -> bytes | None:
    """The JSON body of ``/debug/<page>`` (``""``: the index), or None for an unknown page."""
    if page == "":
        body: Any = {"pages": [f"/debug/{name}" for name in PAGES]}
    elif page in PAGES:
        body = PAGES[page](server)
    else:
        return None
    return json.dumps(body, indent=2, default=str).encode() + b"\n"
