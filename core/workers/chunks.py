"""The shared chunks a connection worker keeps (codec DATA_CACHED), and the owner's record of
them.

A full map is mostly compressed chunks of peers shared by every full map (mapper/frames.py
Shared); sent as bytes per stream, a storm of N full maps moved N times those bytes through the
owner's socket to its workers, and cost more CPU than the maps' sealing. Now a worker is sent a
chunk once (its key and bytes) and keeps it in a ChunkStore, bounded by bytes, least recently
used evicted first; later maps name it by key. The owner's ChunkMirror makes the same moves in
the same order, so both ends agree on what the worker holds with no message about it; a key the
worker does not hold is a bug, and the worker exits (codec.IpcError) to be replaced.
"""

from __future__ import annotations

from collections import OrderedDict

from meshscale.workers.codec import DEFINE, INLINE, IpcError

# Bytes of shared chunks one worker keeps: a full map at 10,000 nodes, allow-all, is about 1 MB
# of chunks, so this holds many maps' worth of versions while bounding the worker's memory.
CACHE_BYTES = 32 << 20


class _Lru:
    """Keys in least-recently-used order with their sizes, bounded by the bytes they stand for.
    The owner's mirror and the worker's store make the same moves in the same order (messages
    on one stream socket), so they hold the same keys without telling each other."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.total = 0
        self.sizes: OrderedDict[int, int] = OrderedDict()

    def fits(self, n: int) -> bool:
        return n <= self.capacity

    def touch(self, key: int) -> bool:
        if key in self.sizes:
            self.sizes.move_to_end(key)
            return True
        return False

    def add(self, key: int, n: int) -> list[int]:
        """Insert ``key``; the keys evicted to make room, oldest first."""
        old = self.sizes.pop(key, None)
        if old is not None:
            self.total -= old
        self.sizes[key] = n
        self.total += n
        evicted = []
        while self.total > self.capacity:
            gone, size = self.sizes.popitem(last=False)
            self.total -= size
            evicted.append(gone)
        return evicted


class ChunkMirror(_Lru):
    """The owner's record of which shared chunks a worker holds (keys and sizes, no bytes)."""

    def use(self, key: int, n: int) -> bool:
        """True: the worker holds ``key`` (send the key). False: it does not; from this message
        on it will (send the bytes with the key)."""
        if self.touch(key):
            return True
        self.add(key, n)
        return False


class ChunkStore(_Lru):
    """The worker's shared chunks, by key: bounded by ``capacity`` bytes, least recently used
    evicted first, in step with the owner's ChunkMirror."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.chunks: dict[int, bytes] = {}

    def resolve(self, segments: list[tuple[int, int, bytes]]) -> list[bytes]:
        """The payload's parts. A key it does not hold (never defined, or evicted: the two ends
        out of step, a bug) raises IpcError: the worker then exits and is replaced, and the
        new pair starts empty on both sides."""
        out = []
        for kind, key, data in segments:
            if kind == INLINE:
                out.append(data)
            elif kind == DEFINE:
                if not self.fits(len(data)):
                    raise IpcError(f"chunk {key} of {len(data)} bytes over the cache")
                for gone in self.add(key, len(data)):
                    del self.chunks[gone]
                self.chunks[key] = data
                out.append(data)
            else:
                if not self.touch(key):
                    raise IpcError(f"chunk {key} is not held here")
                out.append(self.chunks[key])
        return out
