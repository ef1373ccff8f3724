"""Byte streams a DERP connection runs over: the raw upgraded socket, or WebSocket messages.

Both present the same four calls, so the DERP connection code does not care which one it has.
WebSocket framing is wsproto's sans-IO ``Connection`` (already installed with hypercorn); DERP
bytes travel in binary messages whose payloads concatenate into one stream (protocol.md §8.1).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Protocol

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

READ_SIZE = 256 << 10

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ByteStream(Protocol):
    async def read(self) -> bytes:
        """The next chunk of bytes; ``b""`` at end of stream."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def buffered(self) -> int:
        """Bytes written but not yet sent: how congested the way to this client is."""

    def abort(self) -> None:
        """Close now, dropping unsent bytes (a misbehaving or kicked client)."""

    async def close(self) -> None:
        """Flush what can be flushed, then close."""


class _SocketStream:
    """What both streams do the same way: the socket underneath them."""

    _writer: asyncio.StreamWriter

    async def drain(self) -> None:
        await self._writer.drain()

    def buffered(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    def abort(self) -> None:
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()

    async def close(self) -> None:
        await _close_writer(self._writer)


class RawStream(_SocketStream):
    """The socket itself, after the ``101`` (or straight away with Derp-Fast-Start)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes = b""
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._prefix = prefix  # bytes read past the HTTP head

    async def read(self) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        try:
            return await self._reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    def write(self, data: bytes) -> None:
        # A client that just went away: drop quietly (asyncio would warn on repeated writes).
        if not self._writer.transport.is_closing():
            self._writer.write(data)


class WebSocketStream(_SocketStream):
    """DERP over WebSocket binary messages (js/wasm clients, ``TS_DEBUG_DERP_WS_CLIENT``)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: bytes = b""
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        self._prefix = prefix
        self._eof = False

    async def read(self) -> bytes:
        while not self._eof:
            if self._prefix:
                data: bytes | None = self._prefix
                self._prefix = b""
            else:
                try:
                    data = await self._reader.read(READ_SIZE) or None
                except (ConnectionError, OSError):
                    data = None
            self._ws.receive_data(data)
            if data is None:
                self._eof = True
            out = bytearray()
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    out += event.data
                elif isinstance(event, Ping):
                    self._writer.write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if not self._eof:
                        self._writer.write(self._ws.send(event.response()))
                    self._eof = True
                elif isinstance(event, TextMessage):
                    self._eof = True  # DERP is binary; text means a confused peer
            if out:
                return bytes(out)
        return b""

    def write(self, data: bytes) -> None:
        if not self._writer.transport.is_closing():
            self._writer.write(self._ws.send(BytesMessage(data=data)))


def websocket_accept(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.strip().encode("ascii") + _WS_GUID).digest()  # noqa: S324 - RFC
    return base64.b64encode(digest).decode("ascii")


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, OSError, TimeoutError):
        pass
