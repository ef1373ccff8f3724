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

Off, each hook is one test of a module global. Written for issue 19's churn tail
(docs/performance.md); the generator's side is in the churn scenario's figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import IO

ENV = "MESHSCALE_LOOPTRACE"
TICK = 0.01
SHOWN_LAG = 0.02

_out: IO[str] | None = None


def on() -> bool:
    return _out is not None


def record(kind: str, *values: float) -> None:
    if _out is not None:
        _out.write(kind + " " + " ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                        for v in values) + "\n")


class LagMonitor:
    """A timer every TICK seconds; a late one is the loop's lag (a long turn before it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 sink: list[tuple[float, float]] | None = None) -> None:
        self.loop = loop
        self.sink = sink  # (when, lag) pairs; None: written with record()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = self.loop.time() + TICK
        self._handle = self.loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        lag = now - self._due
        if lag > SHOWN_LAG:
            if self.sink is not None:
                self.sink.append((now, lag))
            else:
                record("lag", now, lag)
        if self.sink is None and _out is not None:
            _out.flush()
        self._due = now + TICK
        self._handle = self.loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def install_from_env() -> LagMonitor | None:
    """Start tracing if ``MESHSCALE_LOOPTRACE`` names a file (inside the running loop)."""
    global _out  # noqa: PLW0603 - set once, from serve(), never at import
    value = os.environ.get(ENV)
    if not value:
        return None
    _out = Path(value).open("a", buffering=1 << 16)  # noqa: SIM115 - open for the server's life
    record("start", time.monotonic())
    monitor = LagMonitor(asyncio.get_running_loop())
    monitor.start()
    return monitor


def stop(monitor: LagMonitor | None) -> None:
    global _out  # noqa: PLW0603
    if monitor is not None:
        monitor.stop()
    if _out is not None:
        _out.close()
        _out = None
