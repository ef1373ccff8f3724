"""Map-stream framing: ``u32 LITTLE-endian length | zstd frame of JSON`` (protocol.md §5.2).

A Message is built once per change and shared by every stream that receives it; the zstd frame is
made on first use and cached, so a fan-out to N streams compresses once.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
import zstandard

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if c is None:
        # Level 1: map deltas are small and latency matters more than ratio.
        c = zstandard.ZstdCompressor(level=1)
        _local.zstd = c
    return c


def dumps(obj: Any) -> bytes:
    # orjson's bytes keep its whole output buffer (4 KiB at least, up to about twice the
    # length): the mapper keeps thousands of results (peer JSON, CapMaps, self-node
    # signatures, messages queued for slow streams), so it keeps an exact-size copy.
    return memoryview(orjson.dumps(obj)).tobytes()


def digest(data: bytes) -> bytes:
    """What a stream keeps of its packet filter and SSH policy to see whether they changed:
    a server's filter can be tens of KB at 10,000 nodes, its digest is 16 bytes."""
    return hashlib.blake2b(data, digest_size=16).digest()


class Message:
    __slots__ = ("_body", "_raw_frame", "_zstd_frame")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._zstd_frame: bytes | None = None
        self._raw_frame: bytes | None = None

    @property
    def body(self) -> bytes:
        """The message's JSON."""
        return self._body

    @classmethod
    def of(cls, obj: Any) -> Message:
        return cls(dumps(obj))

    def frame(self, compress: bool) -> bytes:
        if compress:
            if self._zstd_frame is None:
                data = _compressor().compress(self.body)
                self._zstd_frame = struct.pack("<I", len(data)) + data
            return self._zstd_frame
        if self._raw_frame is None:
            body = self.body
            self._raw_frame = struct.pack("<I", len(body)) + body
        return self._raw_frame

    def parts(self, compress: bool) -> list[bytes]:
        """The frame as buffers whose concatenation it is (see FramedMessage)."""
        return [self.frame(compress)]


class FramedMessage(Message):
    """A message whose zstd form is several concatenated frames (a full map's head, cached
    peer chunks, tail). zstd decoders, the Go client's included, decode concatenated frames
    as one stream; only the uncompressed JSON has to be joined for clients without zstd."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[tuple[bytes, bytes]]) -> None:
        # (json, zstd frame) pairs, in order.
        super().__init__(b"")
        self._parts = parts
        self._zstd_frame = None

    @property
    def body(self) -> bytes:
        if not self._body:
            self._body = b"".join(j for j, _ in self._parts)
        return self._body

    def frame(self, compress: bool) -> bytes:
        if compress:
            if self._zstd_frame is None:
                data = b"".join(z for _, z in self._parts)
                self._zstd_frame = struct.pack("<I", len(data)) + data
            return self._zstd_frame
        return super().frame(False)

    def parts(self, compress: bool) -> list[bytes]:
        """The zstd frame as its length prefix and the parts' cached frames, not joined: the
        connection seals them into records straight from these buffers (issue 19)."""
        if not compress or self._zstd_frame is not None:
            return [self.frame(compress)]
        zstd = [z for _, z in self._parts]
        return [struct.pack("<I", sum(map(len, zstd))), *zstd]


def compress(data: bytes) -> bytes:
    return _compressor().compress(data)


class Shared(bytes):
    """A compressed chunk kept by the ChunkCache, so part of many full maps: ``key`` names it
    for good (unlike ``id()``, never reused), and a connection worker (workers/codec.py) is
    sent its bytes once and then only its key."""

    key: int


_shared_keys = itertools.count(1)


def shared(data: bytes) -> Shared:
    out = Shared(data)
    out.key = next(_shared_keys)
    return out


class ChunkCache:
    """Compressed runs of peer fragments, shared by every full map that contains them.

    A chunk is the peers whose IDs fall in one range of CHUNK ids. Its key is the tuple of its
    fragments (the cached bytes objects, so equality is an identity check when nothing changed):
    any change to a peer's JSON makes a new fragment, a new key, and one recompression.

    Under a restrictive policy one range holds different subsets for different viewers (a
    team's servers, a user's own devices), so the cache keeps every subset it was asked for up
    to BUDGET bytes in all, the least recently used dropped first: with one per range, viewers
    of different classes took turns replacing it and nearly every restrictive full map
    recompressed its chunks (docs/performance.md, "The restrictive storm").
    """

    # 64 IDs: a changed peer costs recompressing 64 fragments (0.04 ms) on the next full map,
    # not 256 (0.15 ms); in a storm, where nodes come online between any two full maps, that
    # was most of the compression. The price: about 3 % more bytes than 256-ID chunks (each
    # frame compresses alone), measured on peers with random keys.
    CHUNK = 64
    # Bytes (joined and compressed) of the subsets kept. Once nothing changes, a tailnet needs
    # about one subset per range and class that sees part of it (a few MB at 10,000 nodes); in
    # a storm, peers coming online make new subsets all the time and the stale ones age out.
    BUDGET = 64 << 20

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[bytes, ...], tuple[bytes, bytes]] = OrderedDict()
        self._bytes = 0
        self._versioned: dict[int, tuple[int, bytes, bytes]] = {}

    def get_versioned(self, index: int, version: int,
                      frags: Callable[[], list[bytes]]) -> tuple[bytes, bytes]:
        """The chunk as of ``version`` (the caller bumps it on any change in the range);
        ``frags`` is only called when the cached chunk is stale."""
        hit = self._versioned.get(index)
        if hit is not None and hit[0] == version:
            return hit[1], hit[2]
        body = b",".join(frags())
        packed = shared(compress(body))
        self._versioned[index] = (version, body, packed)
        return body, packed

    def get(self, frags: tuple[bytes, ...], cacheable: bool) -> tuple[bytes, bytes]:
        # The fragments name their range (each holds its peer's ID): they alone are the key.
        hit = self._cache.get(frags)
        if hit is not None:
            self._cache.move_to_end(frags)
            return hit
        body = b",".join(frags)
        if not cacheable:
            return body, compress(body)
        packed: bytes = shared(compress(body))
        self._cache[frags] = (body, packed)
        self._bytes += len(body) + len(packed)
        while self._bytes > self.BUDGET and len(self._cache) > 1:
            _, (old_body, old_packed) = self._cache.popitem(last=False)
            self._bytes -= len(old_body) + len(old_packed)
        return body, packed


COMMA = (b",", compress(b","))
KEEPALIVE = Message.of({"KeepAlive": True})
