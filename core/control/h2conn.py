"""HTTP/2 (server side, prior knowledge) inside an established Noise session.

The I/O adapter between a socket, the sans-IO Noise records and the sans-IO ``h2`` state machine.
Each request runs in its own task; responses honour HTTP/2 flow control, so a slow client slows
only its own streams. What a client can hold is bounded (``limits`` in the config): streams,
frame size, unfinished body bytes per stream and per connection (through the flow-control window
we grant), resets per time window, and deadlines for the HTTP/2 preface, each request body, and
a session with no open request. This module is the reading side and the connection's lifetime
(input, limits, deadlines, close); writing responses (flow control, sealing, the direct writer)
is the base class in ``h2send.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshscale.config import LimitsConfig
from meshscale.control.framing import RAW, Framing
from meshscale.control.h2guard import FrameGuard, FrameSizeError, InboundBudget, WindowCounter
from meshscale.control.h2send import H2Output, H2Stream, tune_transport
from meshscale.control.h2slim import slim_settings
from meshscale.control.linger import linger
from meshscale.control.request import ControlRequest, Handler, ResponseWriter, serve
from meshscale.errors import ProtocolError
from meshscale.noise.records import RecordDecoder, RecordEncoder

log = logging.getLogger(__name__)

READ_CHUNK = 65536
WRITE_BUFFER_HIGH = 1 << 20  # stop reading while this much output waits for a slow reader


class NoiseH2Connection(H2Output):
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: RecordDecoder,
        encoder: RecordEncoder,
        machine_key: bytes,
        capver: int,
        handler: Handler,
        limits: LimitsConfig | None = None,
        on_busy: Callable[[bool], None] | None = None,
        on_success: Callable[[], None] | None = None,
        framing: Framing = RAW,
    ) -> None:
        self.reader = reader
        self.framing = framing
        self.writer = writer
        tune_transport(writer)
        self.decoder = decoder
        self.encoder = encoder
        self.machine_key = machine_key
        self.capver = capver
        self.handler = handler
        self.limits = limits or LimitsConfig()
        self.on_busy = on_busy  # told when the first request opens and the last one ends
        self.on_success = on_success  # told when a request is answered 2xx
        # Inbound headers are a stranger's and are validated; outbound ones are ours, a fixed
        # few (":status", "content-type"): checking and normalising them on every response
        # was a twentieth of a storm's CPU.
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.streams: dict[int, H2Stream] = {}
        self.conn_window = asyncio.Event()
        self.closed = False
        self.guard = FrameGuard(self.limits.max_frame_size)
        self.budget = InboundBudget(self.limits.max_connection_body_bytes)
        self.resets = WindowCounter(self.limits.reset_limit, self.limits.reset_window)
        self._data_seen = 0
        self._resets_seen = 0
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._idle_since = self._started
        self._incomplete = 0  # streams whose body is still arriving
        self._slim = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None

    # -- input ----------------------------------------------------------------------------------

    async def run(self, first: bytes = b"") -> None:
        lim = self.limits
        self.h2.initiate_connection()
        self.h2.update_settings({
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: lim.max_streams,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: lim.max_frame_size,
        })
        self.flush()
        try:
            if first:
                self._receive(self._unwrap(first))
            self._rearm()
            while not self.closed:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                self._receive(self._unwrap(data))
                self._rearm()
                transport = self.writer.transport
                if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                    # The client does not read what it asks for (PING or SETTINGS floods
                    # produce replies): stop reading until it does, but not forever.
                    async with asyncio.timeout(lim.idle_timeout):
                        await self.writer.drain()
        except FrameSizeError as exc:
            log.info("control connection closed: %s", exc)
            self._goaway(h2.errors.ErrorCodes.FRAME_SIZE_ERROR, str(exc))
        except ProtocolError as exc:
            log.info("control connection closed: %s", exc)
        except h2.exceptions.ProtocolError as exc:
            log.info("control connection closed: HTTP/2 error: %s", exc)
            self._goaway(None, "")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            await self.close()

    def _unwrap(self, data: bytes) -> bytes:
        records = self.framing.unwrap(data)
        reply = self.framing.replies()
        if reply:
            self.writer.write(reply)
        return self.decoder.feed(records)

    def _goaway(self, code: h2.errors.ErrorCodes | None, why: str) -> None:
        """Tell the client why before closing (``h2`` has queued its own GOAWAY if code is None)."""
        with contextlib.suppress(Exception):
            if code is not None:
                self.h2.close_connection(error_code=code, additional_data=why.encode()[:256])
            self.flush()

    def _deadline(self) -> float | None:
        lim = self.limits
        if not self.guard.preface_done:
            return self._started + lim.handshake_timeout
        if self._incomplete:
            return min(st.opened for st in self.streams.values() if not st.ended) + (
                lim.body_timeout)
        if not self.streams:
            return self._idle_since + lim.idle_timeout
        return None  # requests being answered (map streams): they keep the session

    def _rearm(self) -> None:
        """(Re)start the one timer that enforces the current deadline, if it changed."""
        deadline = None if self.closed else self._deadline()
        if deadline == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        self._timer = None if deadline is None else self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_at = None, None
        if self.closed:
            return
        if self._expire():
            self.closed = True
            self.reader.feed_eof()  # ends the read loop, which closes the connection
        else:
            self._give_credit()  # refused bodies no longer count: the client may send again
            self.flush()
            self._rearm()

    def _expire(self) -> bool:
        """A deadline passed. True: the whole connection is done."""
        lim = self.limits
        now = self._loop.time()
        if not self.guard.preface_done:
            log.info("control connection closed: no HTTP/2 preface within %.0f s",
                     lim.handshake_timeout)
            return True
        if self._incomplete:
            late = [sid for sid, st in self.streams.items()
                    if not st.ended and now >= st.opened + lim.body_timeout]
            for sid in late:
                self._abandon_body(sid, 408, "request body not complete within "
                                   f"{lim.body_timeout:.0f} s")
            return False
        if not self.streams and now >= self._idle_since + lim.idle_timeout:
            self._goaway(h2.errors.ErrorCodes.NO_ERROR, "idle")
            return True
        return False

    def _receive(self, plain: bytes) -> None:
        if not plain:
            return
        self.guard.feed(plain)  # before h2 buffers anything: refuses oversized frames
        events = self.h2.receive_data(plain)
        self.budget.received(self.guard.data_bytes - self._data_seen)
        self._data_seen = self.guard.data_bytes
        for event in events:
            self._event(event)
        if self.guard.resets != self._resets_seen:
            now = self._loop.time()
            # One call for the read's resets: they share ``now``, so the window can only
            # restart at the first, and the count only grows within it.
            over = self.resets.add(now, self.guard.resets - self._resets_seen)
            self._resets_seen = self.guard.resets
            if over:
                self._goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")
                raise ProtocolError(
                    f"more than {self.limits.reset_limit} stream resets in "
                    f"{self.limits.reset_window:.0f} s")
        self._give_credit()
        self.flush()

    def _give_credit(self) -> None:
        for sid, st in self.streams.items():
            if st.credit and not st.ended:
                with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                    self.h2.increment_flow_control_window(st.credit, sid)
            st.credit = 0
        room = self.budget.grant()
        if room and not self.closed:
            self.h2.increment_flow_control_window(room)

    def _open(self, stream_id: int, st: H2Stream) -> None:
        if not self._slim:  # both sides' SETTINGS are in before a request (h2slim.py)
            slim_settings(self.h2)
            self._slim = True
        if not self.streams and self.on_busy is not None:
            self.on_busy(True)
        self.streams[stream_id] = st
        self._incomplete += 1

    def _body_done(self, st: H2Stream) -> None:
        """No more body bytes will be read for this stream: it no longer counts as held."""
        if not st.ended:
            st.ended = True
            self._incomplete -= 1
            self.budget.released(len(st.body))
            st.body = bytearray()

    def _drop(self, stream_id: int) -> H2Stream | None:
        st = self.streams.pop(stream_id, None)
        if st is not None:
            self._body_done(st)
            if not self.streams:
                self._idle_since = self._loop.time()
                if self.on_busy is not None and not self.closed:
                    self.on_busy(False)
            self._rearm()
        return st

    def _abandon_body(self, stream_id: int, status: int, why: str) -> None:
        """Answer a request whose body we will not read, and stop the client sending it."""
        st = self.streams.get(stream_id)
        if st is None:
            return
        self._body_done(st)
        log.info("control request on stream %d refused: %s", stream_id, why)
        if st.task is None:
            st.task = asyncio.create_task(self._refuse(stream_id, status, why))

    async def _refuse(self, stream_id: int, status: int, why: str) -> None:
        try:
            resp = ResponseWriter(self, stream_id)
            await resp.send(status, why.encode() + b"\n", "text/plain")
            # RFC 9113 §8.1: a complete response may come first; NO_ERROR asks the client to
            # stop sending the rest of the request without treating it as a failure.
            if stream_id in self.streams and not self.closed:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
                self.flush()
        except ConnectionResetError:
            pass
        finally:
            self._drop(stream_id)

    def _event(self, event: h2.events.Event) -> None:
        st: H2Stream | None
        if isinstance(event, h2.events.RequestReceived):
            st = H2Stream(opened=self._loop.time(),
                         headers={str(k): str(v) for k, v in event.headers or []})
            self._open(event.stream_id, st)
            if event.stream_ended:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is None or st.ended:
                return  # refused or answered already: its bytes are not kept
            data = event.data or b""
            if len(st.body) + len(data) > self.limits.max_body_bytes:
                self._abandon_body(event.stream_id, 413,
                                   f"request body over {_size(self.limits.max_body_bytes)}")
                return
            st.body += data
            self.budget.kept(len(data))
            st.credit += event.flow_controlled_length
            if event.stream_ended:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None and st.task is None:
                self._dispatch(event.stream_id, st)
        elif isinstance(event, h2.events.StreamReset):
            st = self._drop(event.stream_id)
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

    def _dispatch(self, stream_id: int, st: H2Stream) -> None:
        if st.task is not None:
            return
        body = bytes(st.body)
        self._body_done(st)
        st.task = asyncio.create_task(self._serve(stream_id, st, body))

    async def _serve(self, stream_id: int, st: H2Stream, body: bytes) -> None:
        req = ControlRequest(
            method=st.headers.get(":method", ""),
            path=st.headers.get(":path", ""),
            headers=st.headers,
            body=body,
            machine_key=self.machine_key,
            capver=self.capver,
            stream_id=stream_id,
        )
        try:
            await serve(self.handler, req, ResponseWriter(self, stream_id))
        finally:
            self._drop(stream_id)

    async def close(self) -> None:
        self.closed = True
        self._incomplete = 0
        if self._timer is not None:
            self._timer.cancel()
        tasks = [st.task for st in self.streams.values() if st.task is not None]
        self.streams.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        try:
            with contextlib.suppress(Exception):
                last = self.framing.goodbye()
                if last and not self.writer.transport.is_closing():
                    self.writer.write(last)
                await linger(self.reader, self.writer)  # our GOAWAY must reach the client
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()
                # A client that reads nothing would keep the socket (and our unsent bytes)
                # forever.
                self._loop.call_later(5.0, self.writer.transport.abort)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"
