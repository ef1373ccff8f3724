"""The sending half of one HTTP/2-over-Noise connection: frames out, as flow control allows.

``H2Output`` holds what a response needs (``ResponseWriter`` in request.py, the mapper's direct
writes): headers, DATA as the stream and connection windows allow, sealed into Noise records a
batch at a time in this thread's reused buffer, and the direct writer a fan-out uses to write a
delta to an idle stream without waking its task. ``h2conn.NoiseH2Connection`` is its one
subclass: it owns the socket's reading side, the h2 state machine's input, the limits and
deadlines, and sets the attributes declared here. The transport and socket buffer sizes that
bound what a slow reader holds are here too (``tune_transport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.connection
import h2.exceptions

from meshscale.control.framing import RAW, Framing
from meshscale.control.h2data import LeanStream, lean_frames
from meshscale.noise.records import MAX_PLAINTEXT, RecordEncoder

# What a connection's transport keeps of our output while the kernel's socket buffer is full
# (asyncio's default is 64 KiB). Past it, a map stream's deltas wait in its queue as shared
# messages (a pointer each; a resync after MAX_BACKLOG) instead of as bytes per connection:
# 64 KiB each allowed 640 MB at 10,000 lagging streams, and fragmented the heap (issue 19).
TRANSPORT_HIGH = 16 << 10
# The kernel's send buffer of a control connection. Left to autotuning, loopback and LAN
# sockets grow to megabytes: a full map the kernel takes whole lets the full-map gate's drain
# return at once, so in a storm every stream's map was handed over while the clients had read
# little (issue 19: 10,000 at once held GBs). Fixed, the rest of a map waits in the transport,
# the drain waits for the client, and FULL_MAPS_AT_ONCE bounds what is in flight. 256 KiB
# still fills a 20 Mbit/s link at 100 ms round trip.
SEND_BUFFER = 256 << 10
SEND_CHUNK = 1 << 20  # at most this much of a response is framed and sealed per write

_local = threading.local()


def _scratch() -> bytearray:
    """This thread's buffer for the frames of one write: filled, sealed and done with before
    anything else runs, so every connection of the thread's event loop can share it, and a
    full map's frames cost no fresh allocation (issue 19)."""
    buf: bytearray | None = getattr(_local, "scratch", None)
    if buf is None:
        # SEND_CHUNK of data in frames of at least 16 KiB, and what h2 had queued.
        buf = _local.scratch = bytearray(SEND_CHUNK + (64 << 10))
    return buf


def tune_transport(writer: asyncio.StreamWriter) -> None:
    """Bound what the transport and the kernel keep of a connection's output (above)."""
    writer.transport.set_write_buffer_limits(high=TRANSPORT_HIGH)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


@dataclass(slots=True)
class H2Stream:
    """One open request stream, as both halves of the connection see it."""

    opened: float  # loop time: the body must be complete by opened + body_timeout
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    window: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False  # the client sent END_STREAM (or we stopped reading the body)
    credit: int = 0  # stream-level window to give back after this batch of frames


class H2Output:
    """Writing responses on one connection's streams (the attributes are set by the subclass,
    ``h2conn.NoiseH2Connection``, which also reads and answers the client's frames)."""

    h2: h2.connection.H2Connection
    writer: asyncio.StreamWriter
    encoder: RecordEncoder
    framing: Framing
    streams: dict[int, H2Stream]
    conn_window: asyncio.Event
    closed: bool

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(self.framing.wrap(self.encoder.encode(data)))

    def stream_open(self, stream_id: int) -> bool:
        return not self.closed and stream_id in self.streams

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], end: bool) -> None:
        if not self.stream_open(stream_id):
            raise ConnectionResetError("stream closed")
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        if not self.stream_open(stream_id):
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.h2.end_stream(stream_id)
        self.flush()

    def abort(self) -> None:
        """Close the socket now and free what it had not sent; the read loop then ends."""
        self.closed = True
        self.writer.transport.abort()

    async def send_data(self, stream_id: int, data: bytes | Sequence[bytes]) -> None:
        """Send ``data`` (one buffer, or parts sent as their concatenation: a full map's cached
        chunks, never joined) on the stream as flow control allows."""
        parts = deque(memoryview(p) for p in
                      ((data,) if isinstance(data, (bytes, bytearray, memoryview)) else data)
                      if len(p))
        while parts:
            st = self.streams.get(stream_id)
            if self.closed or st is None:
                raise ConnectionResetError("stream closed")
            # Every frame the windows allow now, then one seal and one write for all of them:
            # a full map is dozens of frames, and a write per frame cost a syscall each.
            wire = self._frames(stream_id, parts)
            if wire:
                if not self.closed:
                    self.writer.write(self.framing.wrap(wire))
                continue
            st.window.clear()
            self.conn_window.clear()
            waiters = [
                asyncio.ensure_future(st.window.wait()),
                asyncio.ensure_future(self.conn_window.wait()),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        await self.writer.drain()

    def direct_writer(self, stream_id: int) -> Callable[[bytes], bool] | None:
        """A function writing ``data`` to the open stream ``stream_id`` as one DATA frame at
        once, without waiting, if nothing stands in the way: the stream still open, the windows
        and the frame size take it whole, the socket not backed up. It returns False when it
        sent nothing (the caller's task sends it instead). None: the stream is not open.

        A fan-out to thousands of idle streams writes each delta from the mapper's loop this
        way instead of waking one task per stream; the stream's h2 objects, the encoder and the
        transport are looked up here once, not per delta (issue 19)."""
        if self.closed or stream_id not in self.streams:
            return None
        try:
            lean = LeanStream(self.h2, stream_id).data
        except KeyError:
            return None
        streams = self.streams
        transport = self.writer.transport
        closing = transport.is_closing
        buffered = transport.get_write_buffer_size
        high = transport.get_write_buffer_limits()[1]
        seal = self.encoder.seal
        wrap = None if self.framing is RAW else self.framing.wrap
        write = transport.write

        def send(data: bytes) -> bool:
            if self.closed or stream_id not in streams or closing() or buffered() > high:
                return False
            wire = lean(data)
            if wire is None:
                return False
            record = seal(wire) if len(wire) <= MAX_PLAINTEXT else self.encoder.encode(wire)
            write(record if wrap is None else wrap(record))
            return True

        return send

    def _frames(self, stream_id: int, parts: deque[memoryview]) -> bytes | bytearray:
        """Sealed records of DATA frames of the next bytes of ``parts`` (taken from it), as
        far as flow control allows and at most SEND_CHUNK bytes; empty if none fit now.

        The frames are built by lean_frames (h2's books kept, none of its per-frame objects)
        into this thread's reused buffer, sealed from there; should it decline, h2's own
        send_data decides, raising if the stream cannot take data."""
        h2c = self.h2
        buf, n = lean_frames(h2c, stream_id, parts, SEND_CHUNK, _scratch())
        if n:
            return self.encoder.encode(memoryview(buf)[:n])
        room = min(h2c.local_flow_control_window(stream_id), h2c.max_outbound_frame_size)
        if room <= 0:
            return b""
        chunk = bytearray()
        while parts and len(chunk) < room:
            part = parts.popleft()
            take = min(len(part), room - len(chunk))
            chunk += part[:take]
            if take < len(part):
                parts.appendleft(part[take:])
        h2c.send_data(stream_id, bytes(chunk))
        return self.encoder.encode(h2c.data_to_send())
