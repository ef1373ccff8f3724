"""Immutable sets of IP addresses, kept as merged inclusive integer intervals per family.

Policy resolution unions, intersects and tests overlap of address sets constantly; intervals make
each operation linear in the number of ranges, and the wire forms Tailscale uses (``a.b.c.d``,
CIDR, ``first-last`` ranges, ``*``) all map onto them.
"""

from __future__ import annotations

import functools
import ipaddress
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

V4_MAX = (1 << 32) - 1
V6_MAX = (1 << 128) - 1

Interval = tuple[int, int]


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def _contains(intervals: tuple[Interval, ...], value: int) -> bool:
    i = bisect_right(intervals, (value, V6_MAX + 1)) - 1
    return i >= 0 and intervals[i][0] <= value <= intervals[i][1]


def _overlaps(intervals: tuple[Interval, ...], lo: int, hi: int) -> bool:
    i = bisect_right(intervals, (hi, V6_MAX + 1)) - 1
    return i >= 0 and intervals[i][1] >= lo


def _subtract(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


def _intersect(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _to_prefixes(lo: int, hi: int, bits: int) -> Iterator[tuple[int, int]]:
    """Split [lo, hi] into the fewest CIDR blocks: (network, prefix length)."""
    while lo <= hi:
        size = (lo & -lo).bit_length() - 1 if lo else bits
        while size > 0 and lo + (1 << size) - 1 > hi:
            size -= 1
        yield lo, bits - size
        lo += 1 << size


def _fmt(value: int, v6: bool) -> str:
    return str(ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value))


@dataclass(frozen=True, slots=True)
class AddrSet:
    v4: tuple[Interval, ...] = ()
    v6: tuple[Interval, ...] = ()

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def parse(text: str) -> AddrSet:
        """An IP, CIDR (host bits are masked), ``a-b`` range or ``*``. Raises ValueError."""
        return _parse(text)

    @staticmethod
    def from_interval(lo: int, hi: int, v6: bool) -> AddrSet:
        return AddrSet((), ((lo, hi),)) if v6 else AddrSet(((lo, hi),), ())

    @staticmethod
    def of(items: Iterable[str]) -> AddrSet:
        v4: list[Interval] = []
        v6: list[Interval] = []
        for item in items:
            s = AddrSet.parse(item)
            v4.extend(s.v4)
            v6.extend(s.v6)
        return AddrSet(_merge(v4), _merge(v6))

    @staticmethod
    def union_all(sets: Iterable[AddrSet]) -> AddrSet:
        v4: list[Interval] = []
        v6: list[Interval] = []
        for s in sets:
            v4.extend(s.v4)
            v6.extend(s.v6)
        return AddrSet(_merge(v4), _merge(v6))

    # -- algebra ------------------------------------------------------------------------------

    def __or__(self, other: AddrSet) -> AddrSet:
        if not other:
            return self
        if not self:
            return other
        return AddrSet(_merge(self.v4 + other.v4), _merge(self.v6 + other.v6))

    def __sub__(self, other: AddrSet) -> AddrSet:
        return AddrSet(_subtract(self.v4, other.v4), _subtract(self.v6, other.v6))

    def __and__(self, other: AddrSet) -> AddrSet:
        return AddrSet(_intersect(self.v4, other.v4), _intersect(self.v6, other.v6))

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def overlaps(self, other: AddrSet) -> bool:
        # Walk the smaller set and binary-search the larger: a node's two addresses against a
        # grant's thousands of ranges costs two lookups, not thousands.
        for mine, theirs in ((self.v4, other.v4), (self.v6, other.v6)):
            small, big = (mine, theirs) if len(mine) <= len(theirs) else (theirs, mine)
            if any(_overlaps(big, lo, hi) for lo, hi in small):
                return True
        return False

    def contains_ip(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return _contains(self.v6 if addr.version == 6 else self.v4, int(addr))

    def issuperset(self, other: AddrSet) -> bool:
        return not (other - self)

    def is_single_ip(self) -> bool:
        ivs = self.v4 + self.v6
        return len(ivs) == 1 and ivs[0][0] == ivs[0][1]

    # -- wire forms ---------------------------------------------------------------------------

    def prefixes(self) -> list[str]:
        """CIDR blocks covering the set exactly (``a.b.c.d/32`` for single addresses)."""
        out: list[str] = []
        for ivs, v6, bits in ((self.v4, False, 32), (self.v6, True, 128)):
            for lo, hi in ivs:
                out.extend(f"{_fmt(n, v6)}/{plen}" for n, plen in _to_prefixes(lo, hi, bits))
        return out

    def strings(self) -> list[str]:
        """Compact FilterRule form: bare IPs, CIDRs where exact, ``first-last`` ranges otherwise."""
        out: list[str] = []
        for ivs, v6, bits in ((self.v4, False, 32), (self.v6, True, 128)):
            for lo, hi in ivs:
                if lo == hi:
                    out.append(_fmt(lo, v6))
                    continue
                blocks = list(_to_prefixes(lo, hi, bits))
                if len(blocks) == 1:
                    out.append(f"{_fmt(lo, v6)}/{blocks[0][1]}")
                else:
                    out.append(f"{_fmt(lo, v6)}-{_fmt(hi, v6)}")
        return out


@functools.lru_cache(maxsize=1 << 16)
def _parse(text: str) -> AddrSet:
    # Cached (AddrSet is immutable): a router advertising thousands of routes has each one
    # parsed on every approval and visibility decision otherwise.
    text = text.strip()
    if text == "*":
        return ALL
    if "-" in text and "/" not in text:
        first, _, last = text.partition("-")
        a = ipaddress.ip_address(first)
        b = ipaddress.ip_address(last)
        if a.version != b.version or int(a) > int(b):
            raise ValueError(f"invalid range {text!r}")
        return AddrSet.from_interval(int(a), int(b), a.version == 6)
    net = ipaddress.ip_network(text, strict=False)
    return AddrSet.from_interval(
        int(net.network_address), int(net.broadcast_address), net.version == 6
    )


EMPTY = AddrSet()
ALL = AddrSet(((0, V4_MAX),), ((0, V6_MAX),))
CGNAT = AddrSet.parse("100.64.0.0/10")
CHROMEOS_VM = AddrSet.parse("100.115.92.0/23")
TAILSCALE_ULA = AddrSet.parse("fd7a:115c:a1e0::/48")
# What "*" means as a source or node set: every Tailscale address, minus the ChromeOS VM range.
TAILNET = (CGNAT - CHROMEOS_VM) | TAILSCALE_ULA
EXIT_ROUTES = frozenset({"0.0.0.0/0", "::/0"})


def _internet() -> AddrSet:
    # autogroup:internet as Tailscale's control plane writes it: all IPv4 but private, CGNAT and
    # link-local space, and the IPv6 global unicast block.
    v4_excluded = AddrSet.of(
        ["10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"]
    )
    return (AddrSet(((0, V4_MAX),), ()) - v4_excluded) | AddrSet.parse("2000::/3")


INTERNET = _internet()

