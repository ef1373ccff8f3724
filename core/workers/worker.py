"""A connection worker: the Noise handshake, HTTP/2, limits and deadlines of the client
connections the owner hands over, and the sealing and writing of what the owner answers.

Each request is forwarded to the owner whole (codec REQUEST) and the request's task waits until
the owner says it is DONE; what the owner sends for a stream is applied in order by a
``_Outbound``: headers, data (acknowledged once written and drained), END. A fan-out frame is
written at once through the stream's lean direct writer when nothing waits before it; otherwise
it waits in order, and the owner is told the stream is BACKED so its mapper queues further
deltas itself (as it does for a slow local connection) until the stream catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.config import LimitsConfig
from meshscale.configvalues import Prefix
from meshscale.control.h2conn import NoiseH2Connection
from meshscale.control.request import ControlRequest, ResponseWriter
from meshscale.errors import ProtocolError
from meshscale.httphead import plain_response
from meshscale.noise import handshake
from meshscale.noise.records import RecordDecoder, RecordEncoder
from meshscale.transport import RAW_SWITCHING
from meshscale.workers import codec
from meshscale.workers.chunks import CACHE_BYTES, ChunkStore

log = logging.getLogger(__name__)

# Fan-out frames one stream may have waiting in the worker before the connection is dropped as
# too slow. The owner stops sending a stream frames within one message round trip of BACKED,
# so this is reached only by a client that reads nothing while deltas keep coming.
WORKER_BACKLOG = 1 << 20


def _never(data: bytes) -> bool:
    return False


class _Outbound:
    """What the owner sent for one stream, applied in order."""

    def __init__(self, worker: Worker, conn: NoiseH2Connection, conn_id: int, sid: int) -> None:
        self.worker = worker
        self.conn = conn
        self.conn_id = conn_id
        self.sid = sid
        self.queue: deque[tuple[int, Any, int]] = deque()
        self.pump: asyncio.Task[None] | None = None
        self.lean: Callable[[bytes], bool] | None = None
        self.backed = False
        self.waiting = 0  # bytes of fan-out frames in the queue
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fan(self, frame: bytes) -> None:
        if not self.queue and self.pump is None:
            if self.lean is None:
                self.lean = self.conn.direct_writer(self.sid) or _never
            if self.lean(frame):
                return
        self.waiting += len(frame)
        if self.waiting > WORKER_BACKLOG:
            log.info("control connection closed: stream %d took no deltas for too long",
                     self.sid)
            self.conn.abort()
            return
        if not self.backed:
            self.backed = True
            self.worker.send(codec.backed(self.conn_id, self.sid, True))
        self.push(codec.FANOUT, frame)

    def push(self, kind: int, value: Any = None, ack: int = 0) -> None:
        if not self.queue and self.pump is None and kind not in (codec.DATA, codec.FANOUT):
            self._apply(kind, value)
            return
        self.queue.append((kind, value, ack))
        if self.pump is None:
            self.pump = asyncio.get_running_loop().create_task(self._run())

    def _apply(self, kind: int, value: Any) -> None:
        try:
            if kind == codec.HEADERS:
                self.conn.send_headers(self.sid, value[0], value[1])
            elif kind == codec.END:
                self.conn.end_stream(self.sid)
            elif kind == codec.DONE and not self.finished.done():
                self.finished.set_result(None)
        except ConnectionResetError:
            self.queue.clear()

    async def _run(self) -> None:
        try:
            while self.queue:
                kind, value, ack = self.queue.popleft()
                if kind in (codec.DATA, codec.FANOUT):
                    await self.conn.send_data(self.sid, value)
                    if ack:
                        self.worker.send(codec.ack(self.conn_id, self.sid, ack))
                    if kind == codec.FANOUT:
                        self.waiting -= len(value)
                else:
                    self._apply(kind, value)
            if self.backed:
                self.backed = False
                self.worker.send(codec.backed(self.conn_id, self.sid, False))
        except ConnectionResetError:
            self.queue.clear()
        finally:
            self.pump = None

    def stop(self) -> None:
        self.queue.clear()
        if self.pump is not None:
            self.pump.cancel()


class Worker:
    def __init__(self, ctrl: socket.socket, adopt: socket.socket) -> None:
        self.ctrl = ctrl
        self.adopt = adopt
        self.key: X25519PrivateKey | None = None
        self.limits = LimitsConfig()
        self.conns: dict[int, NoiseH2Connection] = {}
        self.streams: dict[bytes, _Outbound] = {}
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.Decoder(codec.TO_WORKER)
        self.chunks = ChunkStore(CACHE_BYTES)
        self.hello = asyncio.get_running_loop().create_future()
        self.stopped = asyncio.get_running_loop().create_future()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        proto = _Ctrl(self)
        await loop.create_unix_connection(lambda: proto, sock=self.ctrl)
        await asyncio.wait([self.hello, self.stopped], return_when=asyncio.FIRST_COMPLETED)
        self.adopt.setblocking(False)
        loop.add_reader(self.adopt.fileno(), self._adopt_ready)
        with contextlib.suppress(asyncio.CancelledError):
            await self.stopped
        loop.remove_reader(self.adopt.fileno())
        for conn in list(self.conns.values()):
            conn.abort()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2.0)
        if self.transport is not None:
            self.transport.close()

    def stop(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    def send(self, message: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(message)

    # -- the owner's messages ------------------------------------------------------------------

    def on_message(self, m: codec.Msg) -> None:
        kind = m.kind
        if kind == codec.FANOUT:
            frame, keys, streams = m.data, m.keys, self.streams
            for i in range(0, len(keys), 8):
                st = streams.get(keys[i:i + 8])
                if st is not None:
                    st.fan(frame)
            return
        if kind == codec.DATA_CACHED:
            # Resolved whether or not the stream is still here: the store must make the same
            # moves as the owner's mirror (chunks.py).
            parts = self.chunks.resolve(m.segments)
            cst = self.streams.get(codec.KEY.pack(m.conn, m.stream))
            if cst is not None:
                cst.push(codec.DATA, parts, m.value)
            return
        if kind == codec.PING:
            self.send(codec.pong(m.value))  # the heartbeat: this loop runs
            return
        if kind == codec.HELLO:
            self.key = X25519PrivateKey.from_private_bytes(m.data)
            raw = json.loads(m.path)
            raw["uncapped_sources"] = tuple(Prefix(p) for p in raw["uncapped_sources"])
            self.limits = LimitsConfig(**raw)
            if not self.hello.done():
                self.hello.set_result(None)
            return
        if kind == codec.STOP:
            self.stop()
            return
        if kind == codec.ABORT:
            conn = self.conns.get(m.conn)
            if conn is not None:
                conn.abort()
            return
        st = self.streams.get(codec.KEY.pack(m.conn, m.stream))
        if st is None:
            return  # the stream ended here first; the owner hears CLOSED
        if kind == codec.HEADERS:
            st.push(kind, (m.headers, bool(m.value)))
        elif kind == codec.DATA:
            st.push(kind, m.data, m.value)
        else:  # END, DONE
            st.push(kind)

    # -- connections ---------------------------------------------------------------------------

    def _adopt_ready(self) -> None:
        while True:
            try:
                raw, fds, flags, _ = socket.recv_fds(self.adopt, codec.MAX_ADOPTION, 4)
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("worker: adoption socket failed: %s", exc)
                self.stop()
                return
            if not raw and not fds:
                self.stop()  # the owner is gone
                return
            try:
                if len(fds) != 1 or flags & socket.MSG_TRUNC:
                    raise codec.IpcError("an adoption carries exactly one socket")
                conn_id, init, rest = codec.parse_adoption(raw)
            except codec.IpcError as exc:
                log.error("worker: bad adoption message: %s", exc)
                for fd in fds:
                    socket.close(fd)
                continue
            task = asyncio.get_running_loop().create_task(
                self._serve(conn_id, socket.socket(fileno=fds[0]), init, rest))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn_id: int, sock: socket.socket, init: bytes, rest: bytes) -> None:
        try:
            sock.setblocking(False)
            try:
                if self.key is None:
                    raise ValueError("no key yet")
                hs = handshake.respond(self.key, init)
            except (ProtocolError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    sock.send(plain_response(400, "Bad Request", f"bad handshake: {exc}"))
                sock.close()
                return
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
            writer.write(RAW_SWITCHING + hs.response)
            self.send(codec.opened(conn_id, hs.version, hs.peer_static))
            log.debug("worker: control connection %d adopted (capability version %d)",
                      conn_id, hs.version)
            conn = NoiseH2Connection(
                reader, writer, RecordDecoder(hs.recv_key), RecordEncoder(hs.send_key),
                hs.peer_static, hs.version, self._handler(conn_id), self.limits,
                on_busy=lambda busy: self.send(codec.busy(conn_id, busy)))
            self.conns[conn_id] = conn
            try:
                await conn.run(first=rest)
            finally:
                self.conns.pop(conn_id, None)
        except (OSError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("worker: control connection failed")
        finally:
            self.send(codec.gone(conn_id))

    def _handler(self, conn_id: int) -> Callable[[ControlRequest, ResponseWriter], Any]:
        async def handle(req: ControlRequest, resp: ResponseWriter) -> None:
            sid = req.stream_id
            key = codec.KEY.pack(conn_id, sid)
            st = _Outbound(self, self.conns[conn_id], conn_id, sid)
            self.streams[key] = st
            self.send(codec.request(conn_id, sid, req.method, req.path,
                                    list(req.headers.items()), req.body))
            try:
                await st.finished
            except asyncio.CancelledError:
                self.send(codec.closed(conn_id, sid))
                raise
            finally:
                self.streams.pop(key, None)
                st.stop()

        return handle


class _Ctrl(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.worker.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for m in self.worker.decoder.feed(data):
                self.worker.on_message(m)
        except codec.IpcError as exc:
            log.error("worker: bad message from the owner (%s): exiting", exc)
            self.worker.stop()
            if self.worker.transport is not None:
                self.worker.transport.pause_reading()  # nothing more is applied

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.stop()  # the owner is gone (or stopped us): no orphan
