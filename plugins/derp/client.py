"""A small asyncio DERP client built on the same codec: for tests, benchmarks and mesh links.

It speaks what the Go client speaks: ``GET /derp`` with ``Upgrade: DERP``, then ServerKey,
ClientInfo, ServerInfo. Over TLS it can pin the server certificate like a DERP map's
``CertName: "sha256-raw:<hex>"`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl
from collections import deque
from typing import Any

from nacl.public import PrivateKey

from meshscale.errors import ProtocolError
from meshscale.plugins.derp import frames, handshake
from meshscale.plugins.derp.frames import Frame, FrameDecoder, FrameType
from meshscale.plugins.derp.handshake import ClientInfo
from meshscale.plugins.derp.streams import READ_SIZE


def insecure_client_context() -> ssl.SSLContext:
    """No chain or name check; pair it with ``expect_sha256`` to pin the exact certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class DerpClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        private_key: PrivateKey,
        server_key: bytes,
        server_info: dict[str, Any],
        decoder: FrameDecoder,
        pending: list[Frame],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.private_key = private_key
        self.public_key = bytes(private_key.public_key)
        self.server_key = server_key
        self.server_info = server_info
        self._decoder = decoder
        self._pending: deque[Frame] = deque(pending)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        private_key: PrivateKey | None = None,
        ssl_context: ssl.SSLContext | None = None,
        expect_sha256: str | None = None,
        info: ClientInfo | None = None,
        host_header: str | None = None,
        connect_timeout: float = 10.0,
    ) -> DerpClient:
        private_key = private_key or PrivateKey.generate()
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None,
                limit=READ_SIZE,
            )
            try:
                if expect_sha256 is not None:
                    _check_pin(writer, expect_sha256)
                writer.write(
                    (
                        f"GET /derp HTTP/1.1\r\nHost: {host_header or host}\r\n"
                        "User-Agent: meshscale-derp-client\r\nConnection: Upgrade\r\n"
                        "Upgrade: DERP\r\n\r\n"
                    ).encode("ascii")
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = head.split(b"\r\n", 1)[0]
                if not status.startswith(b"HTTP/1.1 101"):
                    raise ProtocolError(f"DERP upgrade refused: {status.decode('latin-1')}")
                decoder = FrameDecoder()
                got: deque[Frame] = deque()
                first = await _next(reader, decoder, got)
                if first.type != FrameType.SERVER_KEY:
                    raise ProtocolError(f"expected ServerKey, got 0x{first.type:02x}")
                server_key = frames.parse_server_key(first.payload)
                writer.write(
                    handshake.client_info_frame(
                        private_key, server_key, info or ClientInfo(can_ack_pings=True)
                    )
                )
                second = await _next(reader, decoder, got)
                if second.type != FrameType.SERVER_INFO:
                    raise ProtocolError(f"expected ServerInfo, got 0x{second.type:02x}")
                server_info = handshake.open_server_info(private_key, server_key, second.payload)
            except BaseException:
                writer.close()
                raise
        return cls(
            reader, writer, private_key=private_key, server_key=server_key,
            server_info=server_info, decoder=decoder, pending=list(got),
        )

    # -- sending ------------------------------------------------------------------------------

    def send_nowait(self, dst: bytes, packet: bytes) -> None:
        self.writer.write(frames.send_packet(dst, packet))

    async def send(self, dst: bytes, packet: bytes) -> None:
        self.send_nowait(dst, packet)
        await self.writer.drain()

    async def write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def note_preferred(self, preferred: bool = True) -> None:
        await self.write_raw(frames.note_preferred(preferred))

    async def ping(self, data: bytes) -> None:
        await self.write_raw(frames.ping(data))

    # -- receiving ----------------------------------------------------------------------------

    async def recv(self) -> Frame:
        """The next frame (keep-alives included); ConnectionError when the server closed."""
        return await _next(self.reader, self._decoder, self._pending)

    async def recv_batch(self) -> list[Frame]:
        """Whatever frames the next read completes (at least one); for fast consumers."""
        if self._pending:
            out = list(self._pending)
            self._pending.clear()
            return out
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise ConnectionResetError("DERP server closed the connection")
            got = self._decoder.feed(data)
            if got:
                return got

    async def recv_packet(self) -> tuple[bytes, bytes]:
        """(source key, packet) of the next RecvPacket, skipping other frames."""
        while True:
            frame = await self.recv()
            if frame.type == FrameType.RECV_PACKET:
                return frames.parse_recv_packet(frame.payload)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def _next(reader: asyncio.StreamReader, decoder: FrameDecoder, got: deque[Frame]) -> Frame:
    while not got:
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionResetError("DERP server closed the connection")
        got.extend(decoder.feed(data))
    return got.popleft()


def _check_pin(writer: asyncio.StreamWriter, expect_sha256: str) -> None:
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        raise ProtocolError("no TLS certificate to check against the pin")
    got = hashlib.sha256(der).hexdigest()
    if not hmac.compare_digest(got, expect_sha256.lower().removeprefix("sha256-raw:")):
        raise ProtocolError("cert hash does not match")
