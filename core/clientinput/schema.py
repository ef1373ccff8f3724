"""Checks of client-supplied JSON against tailcfg's Go types (sans-IO).

Every value a client sends that meshscale keeps or relays to other nodes goes through a spec
here first. A spec mirrors the Go type the field has in tailscale's ``tailcfg`` (Go client
1.80+): what a Go client would fail to decode (a number where a string belongs, an integer
beyond 64 bits, a lone UTF-16 surrogate, ``not-an-addrport`` in ``Endpoints``) must never be
stored, or every peer's netmap would carry it and every Go client would reject the whole map.

A spec returns the normalised value, or ``DROP``; what did not fit is written to ``Problems``
with its JSON path. Callers on the request path refuse the request when there are problems
(the Go client never sends such values, so only a broken or hostile client is refused); the
start-up repair of stored rows drops what does not fit and logs it. Unknown object keys are
dropped without a problem: Go's decoder ignores them too, and meshscale never relays what it
does not know.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

DROP: Final = object()
INT64 = (-(2**63), 2**63 - 1)
UINT16 = (0, 2**16 - 1)
UINT64 = (0, 2**64 - 1)
STR_MAX = 1024  # characters of an ordinary Hostinfo string (OS versions, model names, ...)
LIST_MAX = 64  # items of an ordinary list (Services, RequestTags, WoLMACs, ...)
MAP_MAX = 256  # entries of a map (NetInfo.DERPLatency)


class Problems(list[str]):
    """What did not fit, one ``path: why`` per value."""

    def summary(self) -> str:
        more = f" (and {len(self) - 1} more)" if len(self) > 1 else ""
        return self[0] + more


Spec = Callable[[object, str, Problems], object]


def valid_text(s: str) -> bool:
    """True when ``s`` encodes as UTF-8: no lone surrogates (JSON's ``"\\ud800"``)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def string(max_len: int = STR_MAX) -> Spec:
    def check(v: object, path: str, probs: Problems) -> object:
        if not isinstance(v, str):
            probs.append(f"{path}: expected a string, got {_kind(v)}")
            return DROP
        if len(v) > max_len:
            probs.append(f"{path}: longer than {max_len} characters")
            return DROP
        if not valid_text(v):
            probs.append(f"{path}: not valid UTF-8 (a lone surrogate)")
            return DROP
        return v

    return check


def boolean(v: object, path: str, probs: Problems) -> object:
    if not isinstance(v, bool):
        probs.append(f"{path}: expected true or false, got {_kind(v)}")
        return DROP
    return v


# tailscale's opt.Bool travels as JSON true, false or null; null is dropped before a spec runs.
opt_bool = boolean


def integer(bounds: tuple[int, int] = INT64) -> Spec:
    lo, hi = bounds

    def check(v: object, path: str, probs: Problems) -> object:
        # bool is an int in Python, never in Go; nor is 1.0 a Go int.
        if not isinstance(v, int) or isinstance(v, bool):
            probs.append(f"{path}: expected an integer, got {_kind(v)}")
            return DROP
        if not lo <= v <= hi:
            probs.append(f"{path}: integer out of range [{lo}, {hi}]")
            return DROP
        return v

    return check


def number(v: object, path: str, probs: Problems) -> object:
    """A Go float64: finite, in range."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        probs.append(f"{path}: expected a number, got {_kind(v)}")
        return DROP
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        probs.append(f"{path}: number out of range")
        return DROP
    return v


def prefix(v: object, path: str, probs: Problems) -> object:
    """A netip.Prefix in text form (``10.0.0.0/8``, ``fd00::/64``), returned masked."""
    text = _ascii(v, 64)
    net = None
    if text is not None:
        addr, slash, bits = text.partition("/")
        canonical_bits = bits.isdigit() and (bits == "0" or not bits.startswith("0"))
        if slash and canonical_bits and "%" not in addr:
            try:
                net = ipaddress.ip_network(f"{addr}/{int(bits)}", strict=False)
            except ValueError:
                net = None
    if net is None:
        probs.append(f"{path}: not an IP prefix: {_show(v)}")
        return DROP
    return str(net)


def addr_port(v: object, path: str, probs: Problems) -> object:
    """A netip.AddrPort in text form (``1.2.3.4:41641``, ``[2001:db8::1]:41641``), normalised."""
    text = _ascii(v, 80)
    out = None
    if text is not None:
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            v6_only = True
        else:
            host, sep, port = text.rpartition(":")
            v6_only = False
        if sep and port.isdigit() and int(port) <= 65535 and (v6_only or ":" not in host):
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = None
            if ip is not None and (ip.version == 6) == v6_only:
                out = f"[{ip}]:{int(port)}" if v6_only else f"{ip}:{int(port)}"
    if out is None:
        probs.append(f"{path}: not an ip:port: {_show(v)}")
        return DROP
    return out


def list_of(item: Spec, max_items: int = LIST_MAX) -> Spec:
    def check(v: object, path: str, probs: Problems) -> object:
        if not isinstance(v, list):
            probs.append(f"{path}: expected a list, got {_kind(v)}")
            return DROP
        if len(v) > max_items:
            probs.append(f"{path}: more than {max_items} items")
            return DROP
        out = []
        for i, x in enumerate(v):
            got = item(x, f"{path}[{i}]", probs) if x is not None else DROP
            if got is not DROP:
                out.append(got)
        return out

    return check


def map_of(value: Spec, max_items: int = MAP_MAX, key_len: int = 64) -> Spec:
    key = string(key_len)

    def check(v: object, path: str, probs: Problems) -> object:
        if not isinstance(v, dict):
            probs.append(f"{path}: expected an object, got {_kind(v)}")
            return DROP
        if len(v) > max_items:
            probs.append(f"{path}: more than {max_items} entries")
            return DROP
        out = {}
        for k, x in v.items():
            if key(k, f"{path} key", probs) is DROP or x is None:
                continue
            got = value(x, f"{path}[{k!r}]", probs)
            if got is not DROP:
                out[k] = got
        return out

    return check


def struct(fields: Mapping[str, Spec]) -> Spec:
    """A Go struct: known fields checked, unknown ones dropped, nulls dropped."""

    def check(v: object, path: str, probs: Problems) -> object:
        if not isinstance(v, dict):
            probs.append(f"{path}: expected an object, got {_kind(v)}")
            return DROP
        out: dict[str, Any] = {}
        for name, spec in fields.items():
            x = v.get(name)
            if x is None:
                continue
            got = spec(x, f"{path}.{name}", probs)
            if got is not DROP:
                out[name] = got
        # A nested struct left with nothing that fit is dropped as a whole.
        return out if out or not v else DROP

    return check


def _ascii(v: object, max_len: int) -> str | None:
    if isinstance(v, str) and len(v) <= max_len and v.isascii():
        return v
    return None


def _kind(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _show(v: object) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = repr(v)
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= 60 else text[:57] + "..."
