"""Where a request's time goes: a debugging switch, off unless ``MESHSCALE_LOOPTRACE`` is set.

``MESHSCALE_LOOPTRACE=FILE`` makes ``meshscale serve`` append one line per traced step to FILE,
each with ``time.monotonic()`` (one clock for every process of the machine, so the load
generator's own timestamps line up with these):

- ``lag T LAG``: the event loop ran a 10 ms timer LAG seconds late (only lags above 20 ms);
- ``flush START END CHANGES STREAMS BUSY SLICES``: one mapper flush, from its start until
  its last stream had its message; BUSY seconds of that were spent pushing, in SLICES turns;
- ``full NODE REQUEST GATE BUILT WRITTEN BYTES``: a map stream's full map: the request
  reached the handler, passed the full-map gate, was built, and its last byte was taken by the
  socket (the drain returned).

Each server owns one ``LoopTrace`` (``ServerParts.trace``, handed to its mapper, which its map
poll reads), so two servers in one process never write into each other's file. Off, each hook
is one test of a plain attribute (``trace.on``) on paths a flush or a full map takes. Written
for issue 19's churn tail (docs/performance.md); the generator's side is in the churn
scenario's figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

ENV = "MESHSCALE_LOOPTRACE"
TICK = 0.01
SHOWN_LAG = 0.02


class LagMonitor:
    """A timer every TICK seconds; a late one is the loop's lag (a long turn before it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 sink: Callable[[float, float], None],
                 each_tick: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.sink = sink  # called with (when, lag) for each lag over SHOWN_LAG
        self.each_tick = each_tick
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = self.loop.time() + TICK
        self._handle = self.loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        lag = now - self._due
        if lag > SHOWN_LAG:
            self.sink(now, lag)
        if self.each_tick is not None:
            self.each_tick()
        self._due = now + TICK
        self._handle = self.loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


class LoopTrace:
    """One server's trace: its file and the lag monitor writing into it; off until opened."""

    def __init__(self) -> None:
        # A plain attribute, not a property: the hooks test it on every flush and full map.
        self.on = False
        self._out: IO[str] | None = None
        self._monitor: LagMonitor | None = None

    def open(self, path: str | Path) -> None:
        """Append to ``path`` from now on and log the loop's lags (inside the running loop)."""
        self.close()
        self._out = Path(path).open("a", buffering=1 << 16)  # noqa: SIM115 - closed by close()
        self.on = True
        self.record("start", time.monotonic())
        out = self._out
        # Flushed every tick so a trace read while the server runs (or after it is killed)
        # is at most TICK behind.
        self._monitor = LagMonitor(asyncio.get_running_loop(),
                                   lambda when, lag: self.record("lag", when, lag), out.flush)
        self._monitor.start()

    def open_from_env(self) -> bool:
        """Open the file ``MESHSCALE_LOOPTRACE`` names, if it names one; True if it did."""
        value = os.environ.get(ENV)
        if not value:
            return False
        self.open(value)
        return True

    def record(self, kind: str, *values: float) -> None:
        if self._out is not None:
            self._out.write(kind + " " + " ".join(
                f"{v:.4f}" if isinstance(v, float) else str(v) for v in values) + "\n")

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        self.on = False
        if self._out is not None:
            self._out.close()
            self._out = None
