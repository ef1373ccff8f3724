"""Per-node token buckets for client updates (Hostinfo, endpoints), sans-IO.

A node may push ``burst`` updates at once, then ``rate`` per second. An update beyond that is
not dropped: the caller keeps the latest one and applies it when a token is due, so a client
that changes faster than the limit still ends up with its newest state at its peers, and the
fan-out it causes is bounded (issue 11, item 10).
"""

from __future__ import annotations


class UpdateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}  # node -> (tokens, as of)

    def take(self, node_id: int, now: float) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one is due (nothing
        is taken then; call again at that time)."""
        tokens, then = self._buckets.get(node_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[node_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[node_id] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def forget(self, node_id: int) -> None:
        self._buckets.pop(node_id, None)
