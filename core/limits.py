"""Connection admission on the main listener, and calm logging of what it refuses (sans-IO).

A ceiling on all connections, a cap per source address, and, at the ceiling, room made by
closing the connection that has been idle longest (no request open: still reading its first
request head, or a Noise session between requests) before a new one is refused. Connections
that are answering requests (map streams, DERP relays) are never closed to make room, so a flood
of idle connections costs the existing clients nothing and leaves room for new registrations.
Idle connections that have been answered a success (a registration, a map: a node or a key
holder) are closed only after every idle connection that never was.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

FD_RESERVE = 256  # descriptors kept for the database, DERP/STUN sockets, logs, plugins


@dataclass(eq=False, slots=True)
class Slot:
    """One admitted connection."""

    ip: str
    close: Callable[[], None]
    idle_since: float
    busy: bool = False
    proven: bool = False  # was answered a success: closed for room only after strangers
    released: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # "per-source" or "ceiling"
    text: str  # the one line the client is told


class ConnectionTable:
    def __init__(self, max_total: int, max_per_ip: int,
                 clock: Callable[[], float] = time.monotonic,
                 uncapped: Sequence[str] = ()) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.uncapped = [ipaddress.ip_network(p) for p in uncapped]
        self._capped: dict[str, bool] = {}  # per address seen, whether the cap applies
        self.clock = clock
        self.total = 0
        self.per_ip: dict[str, int] = {}
        # Insertion order = idle since, oldest first; strangers first, then proven clients.
        self._idle: dict[Slot, None] = {}
        self._idle_proven: dict[Slot, None] = {}
        self.evicted = 0

    def capped(self, ip: str) -> bool:
        known = self._capped.get(ip)
        if known is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                known = True
            else:
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped  # a dual-stack listener sees v4 peers so
                known = not any(addr in net for net in self.uncapped)
            if len(self._capped) > 65536:
                self._capped.clear()  # addresses come and go: a bounded memo, not a table
            self._capped[ip] = known
        return known

    def admit(self, ip: str, close: Callable[[], None]) -> Slot | Refusal:
        if self.per_ip.get(ip, 0) >= self.max_per_ip and self.capped(ip):
            return Refusal("per-source", f"too many connections from {ip}; "
                           "close some and retry")
        if self.total >= self.max_total and not self.evict_one():
            return Refusal("ceiling", "server at its connection limit; retry shortly")
        slot = Slot(ip, close, self.clock())
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self._idle[slot] = None
        return slot

    def evict_one(self) -> bool:
        """Close the connection idle longest to make room. False: every connection is busy."""
        for idle in (self._idle, self._idle_proven):
            for slot in idle:
                self.release(slot)
                self.evicted += 1
                slot.close()
                return True
        return False

    def set_busy(self, slot: Slot, busy: bool) -> None:
        if slot.released or slot.busy == busy:
            return
        slot.busy = busy
        if busy:
            self._idle.pop(slot, None)
            self._idle_proven.pop(slot, None)
        else:
            slot.idle_since = self.clock()
            (self._idle_proven if slot.proven else self._idle)[slot] = None

    def set_proven(self, slot: Slot) -> None:
        if slot.released or slot.proven:
            return
        slot.proven = True
        if slot in self._idle:
            del self._idle[slot]
            self._idle_proven[slot] = None

    def release(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        self._idle.pop(slot, None)
        self._idle_proven.pop(slot, None)
        self.total -= 1
        left = self.per_ip[slot.ip] - 1
        if left:
            self.per_ip[slot.ip] = left
        else:
            del self.per_ip[slot.ip]


@dataclass(slots=True)
class SummaryLog:
    """Counts repeated events and logs them as one line per ``interval`` seconds.

    Under attack the same refusal may happen thousands of times a second; one line a minute with
    the counts says as much without filling the disk.
    """

    interval: float
    clock: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=dict)
    example: str = ""
    _last: float = -1e18

    def note(self, what: str, example: str = "") -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if example:
            self.example = example
        now = self.clock()
        if now - self._last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.counts:
            parts = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
            since = "" if self._last < -1e17 else f" in the last {self.interval:.0f} s"
            hint = f" (latest from {self.example})" if self.example else ""
            log.warning("connection limits: %s%s%s; see limits.* in docs/security.md",
                        parts, since, hint)
            self.counts.clear()
        self._last = self.clock() if now is None else now


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def connection_ceiling(configured: int, fd_limit: int) -> int:
    """The configured ceiling, lowered so that accept() never runs out of descriptors first."""
    return max(1, min(configured, fd_limit - FD_RESERVE))
