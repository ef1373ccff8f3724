"""How Noise records travel on a control connection's socket (protocol.md §3.9)."""

from __future__ import annotations

from typing import Protocol


class Framing(Protocol):
    """What carries the Noise records: the upgraded socket itself, or WebSocket messages
    (meshscale.websocket.WebSocketFraming, for the JS/WASM client)."""

    def wrap(self, data: bytes | bytearray) -> bytes | bytearray: ...

    def unwrap(self, data: bytes) -> bytes:
        """Record bytes received; ProtocolError on a violation, ConnectionError when over."""

    def replies(self) -> bytes:
        """Framing-level answers to send now (WebSocket pongs)."""

    def goodbye(self) -> bytes:
        """The last bytes before the socket closes (a WebSocket close frame)."""


class _Raw:
    """The socket itself: records go as they are."""

    def wrap(self, data: bytes | bytearray) -> bytes | bytearray:
        return data

    def unwrap(self, data: bytes) -> bytes:
        return data

    def replies(self) -> bytes:
        return b""

    def goodbye(self) -> bytes:
        return b""


RAW: Framing = _Raw()
