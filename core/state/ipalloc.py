"""Tailscale address allocation from prefixes.v4 / prefixes.v6."""

from __future__ import annotations

import ipaddress
import secrets

from meshscale.errors import MeshscaleError

# Tailscale never hands out the ChromeOS VM range inside 100.64.0.0/10.
_RESERVED_V4 = ipaddress.ip_network("100.115.92.0/23")


class AddressPoolExhausted(MeshscaleError):
    pass


class IPAllocator:
    def __init__(self, prefix: str, strategy: str = "sequential") -> None:
        self.network = ipaddress.ip_network(prefix)
        self.strategy = strategy
        self.used: set[str] = set()
        self._next = 1

    def _usable(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if str(addr) in self.used:
            return False
        if addr == self.network.network_address:
            return False
        if self.network.version == 4:
            if addr == self.network.broadcast_address:
                return False
            if addr in _RESERVED_V4:
                return False
        return True

    def allocate(self) -> str:
        size = self.network.num_addresses
        if self.strategy == "random":
            for _ in range(64):
                candidate = self.network.network_address + secrets.randbelow(size)
                if self._usable(candidate):
                    self.used.add(str(candidate))
                    return str(candidate)
        # Sequential (and the fallback for a crowded random pool): continue where we left off.
        for step in range(size):
            offset = (self._next + step) % size
            candidate = self.network.network_address + offset
            if self._usable(candidate):
                self._next = offset + 1
                self.used.add(str(candidate))
                return str(candidate)
        raise AddressPoolExhausted(f"no free address left in {self.network}")

    def reserve(self, addr: str | None) -> None:
        if addr:
            self.used.add(addr)

    def release(self, addr: str | None) -> None:
        if addr:
            self.used.discard(addr)
