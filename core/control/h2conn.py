"""HTTP/2 (server side, prior knowledge) inside an established Noise session.

The I/O adapter between a socket, the sans-IO Noise records and the sans-IO ``h2`` state machine.
Each request runs in its own task; responses honour HTTP/2 flow control, so a slow client slows
only its own streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from meshscale.errors import ProtocolError
from meshscale.noise.records import RecordDecoder, RecordEncoder

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # 1 MiB: what the Go client itself accepts for JSON replies
MAX_STREAMS = 64
READ_CHUNK = 65536


@dataclass(slots=True)
class ControlRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    machine_key: bytes  # from the Noise handshake: the only identity we trust
    capver: int  # from the Noise initiation header
    stream_id: int = 0


@dataclass(slots=True)
class _Stream:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    window: asyncio.Event = field(default_factory=asyncio.Event)
    too_large: bool = False
    ended: bool = False


class ResponseWriter:
    """What a handler uses to answer one request."""

    def __init__(self, conn: NoiseH2Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.started = False
        self.finished = False

    async def start(self, status: int, content_type: str = "") -> None:
        headers = [(":status", str(status))]
        if content_type:
            headers.append(("content-type", content_type))
        self._conn.send_headers(self.stream_id, headers, end=False)
        self.started = True

    async def write(self, data: bytes) -> None:
        await self._conn.send_data(self.stream_id, data)

    async def end(self) -> None:
        if not self.finished:
            self._conn.end_stream(self.stream_id)
            self.finished = True

    async def send(self, status: int, body: bytes = b"", content_type: str = "") -> None:
        await self.start(status, content_type)
        if body:
            await self.write(body)
        await self.end()

    @property
    def closed(self) -> bool:
        return self._conn.closed or self.stream_id not in self._conn.streams


Handler = Callable[[ControlRequest, ResponseWriter], Awaitable[None]]


class NoiseH2Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: RecordDecoder,
        encoder: RecordEncoder,
        machine_key: bytes,
        capver: int,
        handler: Handler,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = decoder
        self.encoder = encoder
        self.machine_key = machine_key
        self.capver = capver
        self.handler = handler
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.streams: dict[int, _Stream] = {}
        self.conn_window = asyncio.Event()
        self.closed = False

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(self.encoder.encode(data))

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], end: bool) -> None:
        if self.closed or stream_id not in self.streams:
            raise ConnectionResetError("stream closed")
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        if self.closed or stream_id not in self.streams:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.h2.end_stream(stream_id)
        self.flush()

    async def send_data(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            st = self.streams.get(stream_id)
            if self.closed or st is None:
                raise ConnectionResetError("stream closed")
            window = min(
                self.h2.local_flow_control_window(stream_id),
                self.h2.max_outbound_frame_size,
            )
            if window <= 0:
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
                continue
            chunk = view[:window]
            self.h2.send_data(stream_id, bytes(chunk))
            view = view[window:]
            self.flush()
        await self.writer.drain()

    # -- input ----------------------------------------------------------------------------------

    async def run(self, first: bytes = b"") -> None:
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        self.flush()
        try:
            if first:
                self._receive(self.decoder.feed(first))
            while not self.closed:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                self._receive(self.decoder.feed(data))
        except ProtocolError as exc:
            log.info("control connection closed: %s", exc)
        except h2.exceptions.ProtocolError as exc:
            log.info("control connection closed: HTTP/2 error: %s", exc)
            with contextlib.suppress(Exception):
                self.h2.close_connection()
                self.flush()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.close()

    def _receive(self, plain: bytes) -> None:
        if not plain:
            return
        for event in self.h2.receive_data(plain):
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        st: _Stream | None
        if isinstance(event, h2.events.RequestReceived):
            st = _Stream(headers={str(k): str(v) for k, v in event.headers or []})
            self.streams[event.stream_id] = st
            if event.stream_ended:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.DataReceived):
            st = self.streams.get(event.stream_id)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if st is None:
                return
            if len(st.body) + len(event.data or b"") > MAX_BODY:
                st.too_large = True
                st.body.clear()
            elif not st.too_large:
                st.body += event.data or b""
            if event.stream_ended:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None and st.task is None:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.StreamReset):
            st = self.streams.pop(event.stream_id, None)
            if st is not None and st.task is not None:
                st.task.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                self.conn_window.set()
                for waiting in self.streams.values():
                    waiting.window.set()
            else:
                st = self.streams.get(event.stream_id)
                if st is not None:
                    st.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _dispatch(self, stream_id: int, st: _Stream) -> None:
        if st.task is not None:
            return
        st.task = asyncio.create_task(self._serve(stream_id, st))

    async def _serve(self, stream_id: int, st: _Stream) -> None:
        resp = ResponseWriter(self, stream_id)
        try:
            if st.too_large:
                await resp.send(413, b"request body over 1 MiB\n", "text/plain")
                return
            req = ControlRequest(
                method=st.headers.get(":method", ""),
                path=st.headers.get(":path", ""),
                headers=st.headers,
                body=bytes(st.body),
                machine_key=self.machine_key,
                capver=self.capver,
                stream_id=stream_id,
            )
            await self.handler(req, resp)
            await resp.end()
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            pass
        except Exception:
            log.exception("control request on stream %d failed", stream_id)
            if not resp.started and not self.closed:
                with contextlib.suppress(Exception):
                    await resp.send(500, b"internal error\n", "text/plain")
        finally:
            self.streams.pop(stream_id, None)

    async def close(self) -> None:
        self.closed = True
        tasks = [st.task for st in self.streams.values() if st.task is not None]
        self.streams.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            self.writer.close()
