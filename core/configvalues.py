"""The config's value types and the parsers that check one value each.

``Duration``, ``Prefix``, ``Url``, ``HostPort`` and ``SslMode`` are the typed scalars the schema
(``config.py``) declares its keys with; the loader (``configload.py``) converts YAML and
environment values to them with the parsers here. Plugins parse their own sections' values with
the same functions (``parse_duration``), and the server and plugins split listen addresses with
``split_host_port``, so they live apart from both the schema and the loader.
"""

from __future__ import annotations

import ipaddress
import re

from meshscale.errors import ConfigError


class Duration(float):
    """Seconds, written in YAML as ``30s``, ``5m``, ``1h``, ``180d`` or a bare number."""


class Prefix(str):
    """An IP network in CIDR form, validated."""

    __slots__ = ()


class Url(str):
    """An http(s) URL."""

    __slots__ = ()


class HostPort(str):
    """``host:port`` (``[v6]:port`` for IPv6); an empty string disables the listener."""

    __slots__ = ()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object, path: str) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(path, "expected a duration such as 30s, 5m or 1h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(path, "a duration cannot be negative")
        return Duration(value)
    if isinstance(value, str):
        # Go-style compound durations ("1h30m") as well as single units.
        parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value.replace(" ", ""))
        if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
            return Duration(sum(float(n) * _UNITS[u] for n, u in parts))
        m = _DURATION.match(value)
        if m:
            return Duration(float(m.group(1)) * _UNITS[m.group(2)])
    raise ConfigError(path, f"expected a duration such as 30s, 5m or 1h, got {value!r}")


def parse_host_port(value: str, path: str) -> HostPort:
    if value == "":
        return HostPort("")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(path, f"expected host:port, got {value!r}")
    host = host.strip("[]")
    if host not in ("", "localhost"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
                raise ConfigError(path, f"invalid host in {value!r}") from None
    return HostPort(value)


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - empty host means all


def parse_cli_address(value: str, path: str = "cli.address") -> tuple[str, int]:
    """cli.address as headscale takes it (``host:port``; port 443 if left out), or an
    ``https://`` URL. Never plain HTTP: the API key would cross the network readable, and
    headscale's CLI, too, only speaks TLS to a remote server (cli.insecure skips the
    certificate check, it does not turn TLS off)."""
    text = value.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "https":
            raise ConfigError(path, f"{value!r}: the remote CLI speaks HTTPS only (the API key "
                              "must not cross the network in clear text); on the server's own "
                              "machine leave cli.address empty to use the unix socket")
        text = rest.rstrip("/")
        if "/" in text:
            raise ConfigError(path, f"{value!r}: give the server's address without a path")
    if not text:
        raise ConfigError(path, "empty address")
    if text.startswith("["):
        text = text if "]:" in text else text + ":443"
    elif text.count(":") > 1:
        text = f"[{text}]:443"  # a bare IPv6 address
    elif ":" not in text:
        text += ":443"
    parse_host_port(text, path)
    host, port = split_host_port(text)
    if not host or port == 0:
        raise ConfigError(path, f"{value!r}: expected host:port, e.g. meshscale.example.com:443")
    return host, port


class SslMode(str):
    """libpq's sslmode; headscale's ``ssl: true/false`` means require/disable."""

    __slots__ = ()


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SSL_BOOLS = {"true": "require", "t": "require", "1": "require",
              "false": "disable", "f": "disable", "0": "disable"}


def parse_ssl_mode(value: object, path: str) -> SslMode:
    if isinstance(value, bool):
        return SslMode("require" if value else "disable")
    if isinstance(value, str):
        mode = _SSL_BOOLS.get(value.strip().lower(), value.strip().lower())
        if mode in SSL_MODES:
            return SslMode(mode)
    raise ConfigError(path, f"expected true, false or a libpq sslmode ({', '.join(SSL_MODES)}), "
                            f"got {value!r}")


_NAMED_PORTS = {"http": "80", "https": "443"}


def letsencrypt_listen_addr(value: str) -> str:
    """headscale's ``tls_letsencrypt_listen`` (``:http``, ``0.0.0.0:80``) as ``host:port``."""
    host, _, port = value.rpartition(":")
    return f"{host}:{_NAMED_PORTS.get(port, port)}"
