"""The policy's leaf values, parsed one at a time, and the JSON-shape checks every section uses.

Protocols, port ranges, ``alias:ports``, IP specs, prefixes, tag names and Go durations: each
parsed and refused with Tailscale's wording where it has one. ``parse.py`` (the sections and
their aliases) and ``policytests.py`` (the policy's tests) both build on these.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from meshscale.errors import PolicyError
from meshscale.plugins.policy.addrset import AddrSet
from meshscale.plugins.policy.model import ALL_PORTS, IPSpec, PortRange

PROTOCOLS: dict[str, int] = {
    "icmp": 1, "igmp": 2, "ipv4": 4, "ip-in-ip": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "sctp": 132, "fc": 133,
}
PORT_PROTOCOLS = frozenset({6, 17, 132})
_DURATION = re.compile(r"^[-+]?(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def obj_fields(obj: Any, loc: str, allowed: Iterable[str]) -> dict[str, Any]:
    """Lower-case the keys of a JSON object (Tailscale matches them case-insensitively),
    drop ``#``-prefixed annotation keys and refuse unknown ones."""
    if not isinstance(obj, dict):
        raise PolicyError(loc, "must be an object")
    allowed_set = set(allowed)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key.startswith("#"):
            continue
        low = key.lower()
        if low not in allowed_set:
            raise PolicyError(f"{loc}.{key}" if loc else key, "unknown field")
        out[low] = value
    return out


def str_list(value: Any, loc: str, *, allow_null: bool = True) -> list[str]:
    if value is None and allow_null:
        return []
    if not isinstance(value, list):
        raise PolicyError(loc, "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(f"{loc}[{i}]", "must be a string")
    return list(value)


def parse_duration(text: str) -> float:
    """Go ``time.ParseDuration`` (what Tailscale uses for checkPeriod), in seconds."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(f'time: invalid duration "{text}"')
    total = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return -total if text.startswith("-") else total


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """``*``, ``22``, ``80-443`` or a comma list of those. Raises ValueError with the reason."""
    if text == "*":
        return ALL_PORTS
    out: list[PortRange] = []
    for part in text.split(","):
        if "-" in part:
            bounds = [b for b in part.split("-") if b != ""]
            if len(bounds) != 2:
                raise ValueError("invalid port range format")
            first, last = _port(bounds[0]), _port(bounds[1])
            if first > last:
                raise ValueError("invalid port range: first port is greater than last port")
            out.append((first, last))
        else:
            port = _port(part)
            if port < 1:
                raise ValueError("first port must be >0, or use '*' for wildcard")
            out.append((port, port))
    return tuple(out)


def _port(text: str) -> int:
    if not text.isdigit():
        raise ValueError("invalid first integer")
    value = int(text)
    if value > 65535:
        raise ValueError("port number out of range")
    return value


def parse_proto(text: str, loc: str) -> tuple[int, ...]:
    """A protocol name or IANA number; "" means the client's default set."""
    low = text.strip().lower()
    if low == "":
        return ()
    if low in PROTOCOLS:
        return (PROTOCOLS[low],)
    if low == "*":
        raise PolicyError(loc, 'proto name "*" not known; use a protocol number 0-255 or name')
    if not low.isdigit():
        raise PolicyError(loc, f"invalid protocol {text!r}: use a known name or a number 0-255")
    if low.startswith("0"):
        raise PolicyError(loc, f"leading 0 not permitted in protocol number {text!r}")
    number = int(low)
    if number > 255:
        raise PolicyError(loc, f"protocol number {number} out of range (0-255)")
    return (number,)


def split_host_port(text: str) -> tuple[str, str]:
    """``alias:ports`` -> (alias, ports); IPv6 may be bracketed (``[fd7a::1]:80``)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("square brackets are only valid around IPv6 addresses")
        host = text[1:close]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError("square brackets are only valid around IPv6 addresses") from None
        text = host + text[close + 1 :]
    idx = text.rfind(":")
    if idx <= 0 or idx == len(text) - 1:
        raise ValueError("must have the form alias:ports")
    return text[:idx], text[idx + 1 :]


def as_list(value: Any, loc: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(loc, "must be a list")
    return value


def as_str(value: Any, loc: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(loc, "must be a string")
    return value


def parse_prefix(text: str) -> AddrSet:
    text = text.strip()
    if "/" in text:
        ipaddress.ip_network(text, strict=False)
    else:
        ipaddress.ip_address(text)
    return AddrSet.parse(text)


def check_tag_name(tag: str, loc: str) -> None:
    if not tag.startswith("tag:"):
        raise PolicyError(loc, "tag names must start with 'tag:'")
    rest = tag[len("tag:") :]
    if not rest or not ("a" <= rest[0] <= "z" or "A" <= rest[0] <= "Z"):
        raise PolicyError(loc, "tag names must start with a letter, after 'tag:'")


def parse_ip_spec(text: str, loc: str) -> IPSpec:
    if text == "*":
        return IPSpec((), ((0, 65535),))
    proto = ""
    ports_text = text
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise PolicyError(loc, "expected only one colon in Internet protocol and port type")
        proto, ports_text = parts
    protos = parse_proto(proto, loc)
    try:
        ports = parse_ports(ports_text)
    except ValueError as exc:
        raise PolicyError(loc, f'port range "{ports_text}": {exc}') from None
    return IPSpec(protos, ports)
