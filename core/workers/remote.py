"""A control connection served by a worker process, as the owner's handlers see it.

``RemoteConnection`` implements the ``Connection`` protocol (control/request.py), so ControlPlane
and MapPoll answer a request on a worker's connection exactly as on one of their own: headers,
data, end and abort become messages to the worker. Two things keep the owner's cost per
recipient low in a fan-out: ``direct_writer`` appends the stream's 8-byte key to the worker's
batch for that frame (one message per worker per distinct frame, sent at the end of the loop
turn; workers/link.py), and it refuses (False) while the worker reports the stream backed up or
more than WRITE_HIGH bytes wait for that worker in the owner (link.py), so the mapper's session
queues the deltas as it does for a slow local connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from meshscale.control.request import ControlRequest, Handler, ResponseWriter, serve
from meshscale.workers import codec
from meshscale.workers.chunks import ChunkMirror

# A fan-out frame larger than this goes the send_data way (acknowledged, flow-controlled) rather
# than into a batch: deltas are tens to hundreds of bytes, a batch is meant for them.
MAX_BATCHED_FRAME = 64 << 10


class Link(Protocol):
    """What a RemoteConnection needs of its worker's link (workers/link.py WorkerLink)."""

    chunks: ChunkMirror

    def send(self, message: bytes) -> None: ...
    def send_parts(self, parts: list[bytes]) -> None: ...
    def batch(self, frame: bytes, key: bytes) -> None: ...
    def congested(self) -> bool: ...


class _Stream:
    __slots__ = ("acks", "backed", "dead", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.backed = False  # the worker holds fan-out frames for it: send none directly
        self.dead = False
        self.acks: dict[int, asyncio.Future[None]] = {}


class RemoteConnection:
    """One handed-over connection: its streams' requests are answered here, written there."""

    def __init__(self, link: Link, conn_id: int, handler: Handler,
                 on_busy: Callable[[bool], None] | None,
                 on_success: Callable[[], None] | None) -> None:
        self.link = link
        self.id = conn_id
        self.handler = handler
        self.on_busy = on_busy
        self.on_success = on_success
        self.machine_key = b""
        self.capver = 0
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks = 0

    # -- the Connection protocol -------------------------------------------------------------

    def stream_open(self, stream_id: int) -> bool:
        return not self.closed and stream_id in self.streams

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], end: bool) -> None:
        if not self.stream_open(stream_id):
            raise ConnectionResetError("stream closed")
        self.link.send(codec.headers(self.id, stream_id, headers, end))

    async def send_data(self, stream_id: int, data: bytes | Sequence[bytes]) -> None:
        """Returns when the worker has written and drained the bytes (its ACK): the full-map
        gate and the queued-delta writer rely on that to pace themselves by the client."""
        st = self.streams.get(stream_id)
        if self.closed or st is None:
            raise ConnectionResetError("stream closed")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            parts = [p for p in data if p]
            if not parts:
                return
            if sum(map(len, parts)) <= codec.DATA_CHUNK:
                # A full map: its parts written as they are (no join, no copy per message),
                # each shared chunk the worker holds already as its key alone (chunks.py).
                ack, fut = self._new_ack(st)
                self.link.send_parts(codec.data_cached(self.id, stream_id, ack, parts,
                                                       self.link.chunks))
                await self._acked(st, ack, fut)
                return
            data = b"".join(parts)
        if not data:
            return
        view = memoryview(data)
        last = len(view) - 1
        for start in range(0, len(view), codec.DATA_CHUNK):
            ack = 0
            if start + codec.DATA_CHUNK > last:  # the last chunk is acknowledged
                ack, fut = self._new_ack(st)
            self.link.send(codec.data(self.id, stream_id, ack,
                                      view[start:start + codec.DATA_CHUNK]))
        await self._acked(st, ack, fut)

    def _new_ack(self, st: _Stream) -> tuple[int, asyncio.Future[None]]:
        self._acks = ack = (self._acks % 0xFFFFFFFF) + 1
        fut = st.acks[ack] = asyncio.get_running_loop().create_future()
        return ack, fut

    @staticmethod
    async def _acked(st: _Stream, ack: int, fut: asyncio.Future[None]) -> None:
        try:
            await fut
        finally:
            st.acks.pop(ack, None)

    def direct_writer(self, stream_id: int) -> Callable[[bytes], bool] | None:
        st = self.streams.get(stream_id)
        if self.closed or st is None:
            return None
        key = codec.KEY.pack(self.id, stream_id)
        batch, congested = self.link.batch, self.link.congested

        def send(data: bytes) -> bool:
            if st.backed or st.dead or len(data) > MAX_BATCHED_FRAME or congested():
                return False
            batch(data, key)
            return True

        return send

    def end_stream(self, stream_id: int) -> None:
        if self.stream_open(stream_id):
            self.link.send(codec.end(self.id, stream_id))

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.link.send(codec.abort(self.id))

    # -- what the worker reports -------------------------------------------------------------

    def request(self, msg: codec.Msg) -> None:
        if msg.stream in self.streams or self.closed:
            return  # a stream id is used once; a request after ABORT is moot
        st = self.streams[msg.stream] = _Stream()
        req = ControlRequest(method=msg.method, path=msg.path, headers=dict(msg.headers),
                             body=msg.data, machine_key=self.machine_key, capver=self.capver,
                             stream_id=msg.stream)
        st.task = asyncio.get_running_loop().create_task(self._serve(req))

    def acked(self, stream_id: int, ack: int) -> None:
        st = self.streams.get(stream_id)
        fut = None if st is None else st.acks.get(ack)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def set_backed(self, stream_id: int, flag: bool) -> None:
        st = self.streams.get(stream_id)
        if st is not None:
            st.backed = flag

    def stream_closed(self, stream_id: int) -> None:
        """The client reset the stream or the connection went: stop its handler."""
        st = self.streams.pop(stream_id, None)
        if st is None:
            return
        st.dead = True
        for fut in st.acks.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("stream closed"))
        if st.task is not None:
            st.task.cancel()

    def lost(self) -> None:
        """The connection is gone (the worker said so, or the worker died)."""
        self.closed = True
        for sid in list(self.streams):
            self.stream_closed(sid)
        if not self.gone.done():
            self.gone.set_result(None)

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, req: ControlRequest) -> None:
        """As NoiseH2Connection._serve; then DONE tells the worker its request task may end."""
        sid = req.stream_id
        try:
            await serve(self.handler, req, ResponseWriter(self, sid))
        finally:
            st = self.streams.pop(sid, None)
            if st is not None:
                st.dead = True
                if not self.closed:
                    self.link.send(codec.done(self.id, sid))
