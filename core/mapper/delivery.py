"""Handing messages to streams a slice at a time, in order (the mapper's one way to a stream).

At 10,000 streams a flush's pushes (a seal and a socket write each, for a stream waiting with
nothing queued) take 0.1 to 0.5 s. Done in one go, every other piece of work of the event loop
waited that long: a handshake, a registration, a reconnect's full map, which needs several
loop turns to drain through a socket's fixed send buffer; under churn those waits added up to
the tail of the latencies (issue 19, docs/performance.md). Pushed a slice of SLICE seconds at
a time with a loop turn between slices, other work waits at most one slice.

Order holds per stream by construction: one queue for every message the mapper sends. A full
map built while messages are queued holds what they say (it is built from the state they came
from, or a later one): each message carries the sequence number it was queued under, and a
stream skips those at or below its last full map's (``MapSession.synced``), so nothing older
than its full map reaches it after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from meshscale.mapper.frames import Message
from meshscale.mapper.session import MapSession

log = logging.getLogger(__name__)

SLICE = 0.02  # seconds of pushing to streams before the loop gets a turn
STEP = 128  # streams pushed between looks at the clock


class Delivery:
    """The queue of (sequence number, message, streams); ``on_done`` runs when it empties."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self.on_done = on_done
        self._queue: deque[tuple[int, Message, Sequence[MapSession]]] = deque()
        self._pos = 0  # the first entry's streams are done up to here
        self._handle: asyncio.Handle | None = None
        self.busy = 0.0  # seconds spent pushing since the queue was last empty...
        self.slices = 0  # ...in this many turns of the loop (MESHSCALE_LOOPTRACE reports)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def add(self, seq: int, sessions: Sequence[MapSession], msg: Message) -> None:
        self._queue.append((seq, msg, sessions))
        if self._handle is None:
            self.run()

    def run(self) -> None:
        """Push for SLICE seconds, then give the loop a turn (no loop: push everything)."""
        self._handle = None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # tools, sync tests
            loop = None
        started = time.monotonic()
        self.slices += 1
        deadline = started + SLICE if loop is not None else float("inf")
        queue = self._queue
        while queue:
            seq, msg, sessions = queue[0]
            pos, n = self._pos, len(sessions)
            while pos < n:
                end = min(n, pos + STEP)
                for s in sessions[pos:end]:
                    if s.synced < seq:
                        try:
                            s.push(msg)
                        except Exception:  # a bug must not stall every later message
                            log.exception("push to the stream of node %d failed; resyncing "
                                          "it", s.node_id)
                            s.resync()
                pos = end
                if pos < n and time.monotonic() >= deadline:
                    self._pos = pos
                    self._pause(loop, started)
                    return
            queue.popleft()
            self._pos = 0
            if queue and time.monotonic() >= deadline:
                self._pause(loop, started)
                return
        self.busy += time.monotonic() - started
        self.on_done()
        self.busy, self.slices = 0.0, 0

    def _pause(self, loop: asyncio.AbstractEventLoop | None, started: float) -> None:
        """End this slice: count its time, and go on in the loop's next turn."""
        self.busy += time.monotonic() - started
        assert loop is not None  # without a loop the deadline is infinite
        self._handle = loop.call_soon(self.run)
