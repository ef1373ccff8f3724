"""Many simulated nodes in one process: register, stream, and watch for markers.

Each node has its own TCP connection, Noise session and HTTP/2 connection, exactly as a real
client does; its map stream is received through the lean path of leanconn.py. Every delta is
decompressed and parsed; of a large full map only the head frame is decoded (the generator
shares the two cores with the server, and a full map's content is checked by the tests, not
here).
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard

from meshscale.bench.leanconn import LeanConnection
from meshscale.simclient import SimNode, decompress_all

PARSE_LIMIT = 64 * 1024  # messages above this are counted, not parsed
HEAD_ONLY = 64 * 1024  # compressed messages above this: only the first frame is decoded
HEAD_STREAM_MAX = 64 * 1024  # ... if it is a head (a frame this big or less); else all of it
FRAME_HEADER_MAX = 18  # bytes of a zstd frame header at most (ZSTD_FRAMEHEADERSIZE_MAX)
_SELF_ID = re.compile(rb'"Node":\{"ID":(\d+)')


@dataclass
class Watch:
    """Waits for ``expected`` observations of one marker; remembers when each arrived."""

    expected: int
    started: float
    arrivals: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    seen_by: set[int] = field(default_factory=set)

    async def wait(self, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{what}: {len(self.seen_by)} of {self.expected} nodes saw it in {timeout} s"
            ) from None

    def hit(self, now: float, member: int) -> None:
        if member in self.seen_by:
            return
        self.seen_by.add(member)
        self.arrivals.append(now - self.started)
        if len(self.arrivals) >= self.expected:
            self.done.set()


class Member:
    """One simulated node and its stream consumer."""

    def __init__(self, fleet: Fleet, index: int, hostname: str) -> None:
        self.fleet = fleet
        self.index = index
        self.conn = LeanConnection()
        self.node = SimNode(hostname, self.conn)
        self.node_id = 0
        self.stream_id = 0
        self.full_maps = 0
        self.messages = 0
        self.first_map = asyncio.Event()
        self.first_map_at = 0.0
        # The newest stream's steps (perf_counter, the clock the server's MESHSCALE_LOOPTRACE
        # uses too): request sent, first body byte, full map's head frame decoded.
        self.stream_sent_at = 0.0
        self.first_byte_at = 0.0
        self.head_at = 0.0

    async def connect(self) -> None:
        await self.node.conn.connect(self.fleet.host, self.fleet.port, self.fleet.server_pub)

    async def register(self, key: str) -> None:
        resp = await self.node.register(key)
        if not resp.get("MachineAuthorized"):
            raise RuntimeError(f"{self.node.hostname}: registration refused: {resp}")

    def open_stream(self) -> None:
        self.first_map.clear()
        old = self.conn.replies.get(self.stream_id)
        if old is not None:
            old.on_data = _discard  # the replaced stream's last bytes must not mix in
            self.conn.release(self.stream_id)
        self.first_byte_at = self.head_at = 0.0
        self.conn.bulk = True  # until its full map is in
        sid = self.conn.start_request(
            "/machine/map", json.dumps(self.node.map_body(True)).encode())
        self.stream_sent_at = time.perf_counter()
        reader = MapReader(self)
        # The stream's last DATA frame comes through h2 (which closes the stream): the same
        # reader takes it.
        self.conn.replies[sid].on_data = reader.feed
        self.conn.claim(sid, reader.feed)
        self.stream_id = sid

    async def close_stream(self) -> None:
        await self.conn.close()

    def _message(self, body: bytes, head_only: bool = False) -> None:
        now = time.perf_counter()
        self.messages += 1
        if head_only or len(body) > PARSE_LIMIT:
            found = _SELF_ID.search(body, 0, 256)
            if found is not None:
                self.node_id = self.node_id or int(found.group(1))
                self._full_map(now, None)
            for raw_observer in self.fleet.raw_observers:
                raw_observer(body, now, self)
            return
        msg = orjson.loads(body)
        if msg.get("KeepAlive") and len(msg) == 1:
            self.messages -= 1  # keep-alives are not activity: settle() ignores them
            return
        if "Node" in msg and ("DERPMap" in msg or "Peers" in msg):
            self._full_map(now, msg)
        self.fleet.observe(msg, now, self)

    def _full_map(self, now: float, msg: dict[str, Any] | None) -> None:
        self.full_maps += 1
        self.conn.bulk = False
        if msg is not None and not self.node_id:
            self.node_id = int(msg["Node"]["ID"])
        self.first_map_at = now
        self.first_map.set()
        self.fleet.full_map_seen(self, now)


class Decompressors:
    """zstd contexts shared by a fleet's readers (one process, one thread).

    A streaming context keeps buffers sized by its frame's window; one per member, kept while
    the member lived, was most of the 5,000-node storm's generator memory (docs/performance.md).
    Only the heads being read at the same moment need a context of their own: they are lent
    from a pool and given back when their head frame ends. A whole frame (a delta) is decoded
    in one call, which keeps no state between calls: one context serves every member.
    """

    def __init__(self) -> None:
        self.whole = zstandard.ZstdDecompressor()
        self._free: list[zstandard.ZstdDecompressor] = []

    def lend(self) -> zstandard.ZstdDecompressor:
        return self._free.pop() if self._free else zstandard.ZstdDecompressor()

    def give_back(self, dctx: zstandard.ZstdDecompressor) -> None:
        self._free.append(dctx)


class MapReader:
    """One stream's messages (u32 LE length + zstd) from its DATA payloads, with its own
    buffer. A message above HEAD_ONLY (a big full map) is not buffered: its head frame is
    decompressed as its bytes arrive (a context lent by the fleet's Decompressors), the rest is
    counted until the message ends."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.fleet = member.fleet
        self.buf = bytearray()
        self.zstd = member.fleet.zstd
        self.skip = 0  # bytes of the current big message still to come
        self.head: Any = None  # its head's decompressor until the head frame ended
        self.head_ctx: zstandard.ZstdDecompressor | None = None  # lent while head is set
        self.head_parts: list[bytes] = []
        self.whole_parts: list[bytes] | None = None  # a big message kept whole (not a map)

    def feed(self, chunk: bytes | None) -> None:
        if chunk is None:
            return
        self.fleet.bytes_received += len(chunk)
        if not self.member.first_byte_at:
            self.member.first_byte_at = time.perf_counter()
        if self.skip:
            take = min(self.skip, len(chunk))
            self._big(chunk[:take] if take < len(chunk) else chunk)
            if take == len(chunk):
                return
            chunk = chunk[take:]
        if self.buf:
            self.buf += chunk
            data = bytes(self.buf)
            self.buf.clear()
        else:
            data = chunk
        size = len(data)
        pos = 0
        while size - pos >= 4:
            (n,) = struct.unpack_from("<I", data, pos)
            if n > HEAD_ONLY:
                if size - pos - 4 < FRAME_HEADER_MAX:
                    break  # its first frame's header is not all here yet
                self.skip = n
                if _head_sized(data[pos + 4:pos + 4 + FRAME_HEADER_MAX]):
                    # A big full map: its first zstd frame is the head (self node, DERP map,
                    # filter); the peer chunks after it are counted in bytes, not decoded.
                    if self.head_ctx is None:
                        self.head_ctx = self.zstd.lend()
                    self.head = self.head_ctx.decompressobj()
                    self.head_parts = []
                else:
                    # One big frame: a storm's batched patches of thousands of nodes coming
                    # online (626 KB at 5,000 nodes, to thousands of streams at once). Kept
                    # whole and decoded in one call, as a small message (and as a client does):
                    # decoding it as it arrives took a context with a window as large as the
                    # message for every stream receiving one (docs/performance.md).
                    self.whole_parts = []
                take = min(n, size - pos - 4)
                self._big(data[pos + 4:pos + 4 + take])
                pos += 4 + take
                continue
            if size - pos - 4 < n:
                break
            self.member._message(_decompress(self.zstd.whole, data[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos < size:
            self.buf += data[pos:] if pos else data

    def _big(self, part: bytes) -> None:
        self.skip -= len(part)
        if self.whole_parts is not None:
            self.whole_parts.append(part)
            if not self.skip:
                body = b"".join(self.whole_parts)
                self.whole_parts = None
                self.member._message(_decompress(self.zstd.whole, body))
            return
        if self.head is not None:
            self.head_parts.append(self.head.decompress(part))
            if self.head.eof:
                self.head = None
                if self.head_ctx is not None:
                    self.zstd.give_back(self.head_ctx)
                    self.head_ctx = None
                self.member.head_at = time.perf_counter()
        if not self.skip:
            if self.head is not None:
                raise ValueError("a full map ended inside its head frame")
            self.member._message(b"".join(self.head_parts), head_only=True)
            self.head_parts = []


class Fleet:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.server_pub: bytes | None = None
        self.members: list[Member] = []
        self.zstd = Decompressors()
        self.watches: dict[str, Watch] = {}
        self.bytes_received = 0
        self.full_map_hook: Callable[[Member, float], None] | None = None
        self.observers: list[Callable[[dict[str, Any], float, Member], None]] = []
        # For full maps too big to parse: called with the raw JSON.
        self.raw_observers: list[Callable[[bytes, float, Member], None]] = []

    # -- building the fleet ---------------------------------------------------------------

    async def add(self, count: int, key: str, prefix: str = "n", concurrency: int = 64,
                  keys: Callable[[int], str] | None = None) -> list[Member]:
        """Connect and register ``count`` nodes, ``concurrency`` at a time."""
        from meshscale.simhandshake import fetch_server_key  # noqa: PLC0415

        if self.server_pub is None:
            self.server_pub = await fetch_server_key(self.host, self.port)
        start = len(self.members)
        new = [Member(self, start + i, f"{prefix}{start + i}") for i in range(count)]
        sem = asyncio.Semaphore(concurrency)

        async def one(m: Member) -> None:
            async with sem:
                await m.connect()
                await m.register(keys(m.index) if keys else key)

        await asyncio.gather(*(one(m) for m in new))
        self.members.extend(new)
        return new

    async def open_streams(self, members: Iterable[Member], timeout: float) -> float:
        """Open streams at once; seconds until every one has its full map."""
        members = list(members)
        t0 = time.perf_counter()
        for m in members:
            m.open_stream()
        await asyncio.wait_for(asyncio.gather(*(m.first_map.wait() for m in members)), timeout)
        return max(m.first_map_at for m in members) - t0

    async def close(self) -> None:
        await asyncio.gather(*(m.close_stream() for m in self.members),
                             return_exceptions=True)

    # -- markers ----------------------------------------------------------------------------

    def watch(self, marker: str, expected: int) -> Watch:
        w = Watch(expected, time.perf_counter())
        self.watches[marker] = w
        return w

    def observe(self, msg: dict[str, Any], now: float, member: Member) -> None:
        for patch in msg.get("PeersChangedPatch") or ():
            for ep in patch.get("Endpoints") or ():
                w = self.watches.get(ep)
                if w is not None:
                    w.hit(now, member.index)
        for observer in self.observers:
            observer(msg, now, member)

    def full_map_seen(self, member: Member, now: float) -> None:
        # A full map shows the current state: a member that reconnected while an event was
        # in flight learns of it this way rather than from a delta.
        for w in self.watches.values():
            if not w.done.is_set() and w.started <= now:
                w.hit(now, member.index)
        if self.full_map_hook is not None:
            self.full_map_hook(member, now)


def _head_sized(header: bytes) -> bool:
    """Whether a big message's first frame is small enough to be a full map's head (decoded as
    it arrives); a frame of unknown or large content is a message of its own."""
    try:
        size = zstandard.get_frame_parameters(header).content_size
    except zstandard.ZstdError:
        return False
    return size <= HEAD_STREAM_MAX  # unknown is ZSTD_CONTENTSIZE_UNKNOWN (2**64 - 1)


def _decompress(dctx: zstandard.ZstdDecompressor, frame: bytes) -> bytes:
    """A delta is one zstd frame (with its size): one call. Several frames (a full map of
    head, peer chunks and tail): each decoded."""
    try:
        out: bytes = dctx.decompress(frame, allow_extra_data=False)
    except zstandard.ZstdError:
        return decompress_all(dctx, frame)
    return out


def _discard(_chunk: bytes | None) -> None:
    return None


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(values)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": s[-1]}


def counter() -> defaultdict[str, int]:
    return defaultdict(int)
