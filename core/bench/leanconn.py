"""A ControlConnection for the load generator's streaming members: the same client, cheaper
to receive with.

Requests (registration, lite updates, the map request itself) still go through h2, as in
``ControlConnection``. What changes is the receive path: an asyncio BufferedProtocol
instead of a StreamReader and a reading task (no task switch, no queue, no 256 KiB allocation
per read), the Noise records of a read opened in one pass, and, for the map stream a member
claims, HTTP/2 DATA frames sliced straight to its reader by ``h2lean.LeanFrames``; every
other frame still goes through h2.
Every record is still decrypted and authenticated; what the member does with the bytes (every
delta decompressed and parsed) is fleet.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import h2.exceptions

from meshscale.bench.h2lean import LeanFrames
from meshscale.errors import ProtocolError
from meshscale.simclient import STREAM_WINDOW, ControlConnection
from meshscale.simhandshake import (
    fetch_server_key,
    finish_handshake,
    make_initiation,
    upgrade_request,
)

HANDSHAKE_RESPONSE = 51


# One receive buffer for every connection: asyncio fills it and calls buffer_updated at once,
# in one turn of the (single-threaded) loop, and received() keeps only copies. A plain Protocol
# makes asyncio allocate a 256 KiB bytes object per read (``max_size``), which glibc serves
# with mmap and page faults. Reads are 64 KiB, as the StreamReader client's were (the
# generator's 11 to 12 GB at 10,000 nodes came with 256 KiB reads, but also with asyncio's own
# Protocol path; not yet explained, see docs/performance.md).
# A connection waiting for a full map (``bulk``) reads up to 1 MiB at once instead: asyncio
# reads once per ready socket per loop turn, so a 1.4 MB map in 64 KiB reads took 22 turns of a
# loop that also decodes 10,000 deltas per flush, and the generator, not the server, made a
# reconnect's tail (issue 19, docs/performance.md). A real client reads its socket as fast as
# the kernel fills it.
_RECEIVE_SIZE = 64 * 1024
BULK_RECEIVE_SIZE = 1 << 20
_shared: dict[int, memoryview] = {}
# Socket reads of every lean connection in this process (a run's figures report how many: the
# same bytes in many more reads is a sign of the kernel's TCP memory under pressure).
reads = [0]


def _receive_buffer(size: int = _RECEIVE_SIZE) -> memoryview:
    buf = _shared.get(size)
    if buf is None:  # created on first use, never at import
        buf = _shared[size] = memoryview(bytearray(size))
    return buf


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, conn: LeanConnection) -> None:
        self.conn = conn
        self.size = _RECEIVE_SIZE  # of the buffer the last get_buffer gave

    def get_buffer(self, sizehint: int) -> memoryview:
        self.size = BULK_RECEIVE_SIZE if self.conn.bulk else _RECEIVE_SIZE
        return _receive_buffer(self.size)

    def buffer_updated(self, nbytes: int) -> None:
        reads[0] += 1
        self.conn.received(_receive_buffer(self.size)[:nbytes].tobytes())

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost()


class LeanConnection(ControlConnection):
    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.frames = LeanFrames(STREAM_WINDOW, self._h2_frames)
        self._handshake = bytearray()  # bytes before the Noise session is up
        self._answer: asyncio.Future[None] | None = None
        self._up = False
        self._h2_fed = False  # h2 was given frames: it may have something to send
        self.bulk = False  # a full map is on its way: read in large pieces (see _RECEIVE_SIZE)

    async def connect(self, host: str, port: int, server_pub: bytes | None = None) -> None:
        server_pub = server_pub or await fetch_server_key(host, port)
        init, ss, e = make_initiation(self.machine, server_pub, self.version)
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        transport, _ = await loop.create_connection(lambda: _Protocol(self), host, port)
        self.transport = transport
        try:
            transport.write(upgrade_request(host, port, init))
            await asyncio.wait_for(self._answer, 30)
            head_end = self._handshake.index(b"\r\n\r\n") + 4
            response = bytes(self._handshake[head_end:head_end + HANDSHAKE_RESPONSE])
            extra = bytes(self._handshake[head_end + HANDSHAKE_RESPONSE:])
            self._start(finish_handshake(ss, e, self.machine, response))
        except BaseException:
            transport.close()
            raise
        self._up = True
        self._handshake.clear()
        if extra:
            self.received(extra)

    def received(self, data: bytes) -> None:
        if not self._up:
            self._handshaking(data)
            return
        try:
            plain = self.decoder.feed(data)
            if plain:
                self.frames.feed(plain)
            if self._h2_fed or self.frames.owed:
                self._flush()
        except (ProtocolError, h2.exceptions.ProtocolError):
            # As the StreamReader client: the server broke the connection, this node is done.
            if self.transport is not None:
                self.transport.close()
            self.lost()

    def _handshaking(self, data: bytes) -> None:
        self._handshake += data
        answer = self._answer
        if answer is None or answer.done():
            return
        head_end = self._handshake.find(b"\r\n\r\n")
        if head_end < 0:
            return
        if not self._handshake.startswith(b"HTTP/1.1 101"):
            answer.set_exception(
                ConnectionError(f"upgrade refused: {bytes(self._handshake[:80])!r}"))
        elif len(self._handshake) >= head_end + 4 + HANDSHAKE_RESPONSE:
            answer.set_result(None)

    def _h2_frames(self, data: bytes) -> None:
        self._h2_fed = True
        for ev in self.h2.receive_data(data):
            self._event(ev)

    def _flush(self) -> None:
        self._h2_fed = False
        data = self.h2.data_to_send() + self.frames.data_to_send()
        if data:
            self.send_records(self.encoder.encode(data))

    def send_records(self, records: bytes | bytearray) -> None:
        if self.transport is not None:
            self.transport.write(records)

    def claim(self, stream_id: int, sink: Callable[[bytes], None]) -> None:
        """The stream's DATA payloads go to ``sink`` past h2 (the request was sent)."""
        self.frames.claim(stream_id, sink)

    def release(self, stream_id: int) -> None:
        self.frames.release(stream_id)

    def lost(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError("connection closed during the handshake"))
        for r in self.replies.values():
            r.done.set()
            r.feed(None)

    async def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
