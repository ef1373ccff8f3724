"""The ``rfc2136:`` config section: parsed into frozen, typed settings or refused with its path."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshscale.configvalues import parse_duration
from meshscale.errors import ConfigError

SECTION = "rfc2136"
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")
KEYS = ("server", "port", "zone", "tsig_key_name", "tsig_algorithm", "tsig_secret",
        "tsig_secret_path", "ttl", "timeout", "keep")


@dataclass(frozen=True, slots=True)
class Rfc2136Settings:
    server: str = ""  # the primary server's address (an IP: no resolver is involved)
    port: int = 53
    zone: str = ""  # the zone updated: dns.base_domain or a zone above it
    tsig_key_name: str = ""
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret: bytes = b""  # decoded; never logged
    ttl: int = 60
    timeout: float = 10.0  # one UPDATE (and each check that the zone serves it)
    keep: float = 3600.0  # values older than this are removed with the next update

    @property
    def enabled(self) -> bool:
        return bool(self.server)


def _secret(raw: Mapping[str, Any], path: str) -> bytes:
    text = raw.get("tsig_secret")
    file = raw.get("tsig_secret_path")
    if text is not None and file is not None:
        raise ConfigError(f"{path}.tsig_secret", "give tsig_secret or tsig_secret_path, not both")
    if file is not None:
        try:
            text = Path(str(file)).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}.tsig_secret_path", f"cannot read it: {exc.strerror}") \
                from None
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{path}.tsig_secret", "required: the TSIG key's base64 secret "
                          "(as in the server's key statement)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}.tsig_secret", "not base64") from None


def parse(raw: Mapping[str, Any], path: str) -> Rfc2136Settings:
    for key in raw:
        if key not in KEYS:
            raise ConfigError(f"{path}.{key}", f"unknown key (known: {', '.join(KEYS)})")
    server = raw.get("server", "")
    if not isinstance(server, str) or not server:
        raise ConfigError(f"{path}.server", "required: the primary DNS server's IP address")
    try:
        ipaddress.ip_address(server)
    except ValueError:
        raise ConfigError(f"{path}.server", f"expected an IP address, got {server!r}") from None
    port = raw.get("port", 53)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{path}.port", f"expected a port number, got {port!r}")
    zone = raw.get("zone", "")
    if not isinstance(zone, str) or not zone.strip("."):
        raise ConfigError(f"{path}.zone", "required: the zone to update (e.g. example.com)")
    key_name = raw.get("tsig_key_name", "")
    if not isinstance(key_name, str) or not key_name:
        raise ConfigError(f"{path}.tsig_key_name", "required: the TSIG key's name")
    algorithm = raw.get("tsig_algorithm", "hmac-sha256")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{path}.tsig_algorithm", f"expected one of {', '.join(ALGORITHMS)}")
    ttl = raw.get("ttl", 60)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 86400:
        raise ConfigError(f"{path}.ttl", f"expected seconds (0-86400), got {ttl!r}")
    timeout = float(parse_duration(raw.get("timeout", "10s"), f"{path}.timeout"))
    keep = float(parse_duration(raw.get("keep", "1h"), f"{path}.keep"))
    if timeout <= 0:
        raise ConfigError(f"{path}.timeout", "must be more than 0")
    return Rfc2136Settings(server=server, port=port, zone=zone.strip(".").lower(),
                           tsig_key_name=key_name, tsig_algorithm=str(algorithm),
                           tsig_secret=_secret(raw, path), ttl=ttl, timeout=timeout, keep=keep)
