"""One open map stream: a bounded queue of shared Messages and what the client already has."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from meshscale import bitset
from meshscale.mapper.frames import Message

# A stream that falls this far behind gets one fresh full map instead of the backlog.
MAX_BACKLOG = 256


class MapSession:
    def __init__(self, node_id: int, compress: bool) -> None:
        self.node_id = node_id
        self.compress = compress
        self.queue: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.closed = False
        self.needs_full = True  # the first message is always a full map
        # Peers the client holds, a bitset (meshscale.bitset; the stream's own bit, when set,
        # means nothing); None means "every node" (no policy restricts visibility). Usually the
        # very int the policy engine gives every node of the same class.
        self.known: int | None = None
        self.slots: bitset.Slots | None = None  # what ``known``'s bits mean (set by full maps)
        self.filter_digest = b""  # of the PacketFilter and SSHPolicy the client holds
        self.ssh_digest = b""
        self.overflows = 0
        # The mapper's delivery_seq when its last full map was built: messages handed over
        # up to then are in that map, and not pushed after it (mapper.py, _deliver).
        self.synced = 0
        self.sent = {"full": 0, "delta": 0, "keepalive": 0}
        self.keepalive_due = False
        self.ticker: asyncio.TimerHandle | None = None
        self.sent_since_tick = False
        # The node's key has expired (or it logged out): its full map has no peers and no
        # deltas reach it until it logs in again (set by each full map).
        self.cut_off = False
        # Set while the stream's writer waits with nothing queued: writes a message at once
        # (True) if its connection can take it without waiting, so a fan-out wakes no task.
        self.direct: Callable[[Message], bool] | None = None

    def known_ids(self) -> list[int] | None:
        """The peers the client holds (None: every node), for debugging views."""
        if self.known is None:
            return None
        ids = (bitset.members(self.known) if self.slots is None
               else self.slots.ids(self.known))
        return [i for i in ids if i != self.node_id]

    def push(self, msg: Message) -> None:
        if self.closed or self.needs_full or self.cut_off:
            return  # a pending full map will carry this change too; a cut-off node gets none
        if self.direct is not None and not self.queue and self.direct(msg):
            return
        if len(self.queue) >= MAX_BACKLOG:
            self.queue.clear()
            self.needs_full = True
            self.overflows += 1
        else:
            self.queue.append(msg)
        self.wakeup.set()

    def resync(self) -> None:
        self.queue.clear()
        self.needs_full = True
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()
