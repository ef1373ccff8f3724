"""``/ts2021`` over WebSocket (protocol.md §3.9), sans-IO: the upgrade and the message framing.

Tailscale's JS/WASM client cannot set request headers or take over a socket, so it opens a
WebSocket (``GET /ts2021?X-Tailscale-Handshake=<base64 initiation>``, subprotocol
``tailscale-control-protocol``) and carries the Noise stream in binary messages whose payloads
concatenate into one byte stream: message boundaries mean nothing. wsproto (the h11 family,
sans-IO) does the RFC 6455 work; this module adds what the control protocol asks of it and the
limits a stranger meets: one message may not exceed ``limits.max_websocket_message`` (32 KiB,
the read limit of the WebSocket library Tailscale's own server uses), text messages are refused,
no extension (compression) is negotiated because Noise records do not compress.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from meshscale.errors import ProtocolError

TS2021_PATH = "/ts2021"
SUBPROTOCOL = "tailscale-control-protocol"  # also the Upgrade token of the plain path
HANDSHAKE_PARAM = "X-Tailscale-Handshake"
# What we send per message: one Noise record's worth, as Tailscale's server does (each record
# is one write there); the Go client reads at most 32 KiB per message.
OUT_MESSAGE = 4096


class UpgradeRefused(Exception):
    """The request is not a WebSocket ``/ts2021`` upgrade we accept; answer ``status``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class PeerClosed(ConnectionError):
    """The client closed the WebSocket (a close frame): the session is over, nothing wrong."""


@dataclass(frozen=True, slots=True)
class Upgrade:
    init: bytes  # the Noise initiation, from the query parameter
    response: bytes  # the 101 to write before any message
    framing: WebSocketFraming


def accept(method: str, target: str, headers: Sequence[tuple[str, str]],
           max_message: int) -> Upgrade:
    """Check a ``/ts2021`` request with ``Upgrade: websocket``; the 101 and the framing, or
    UpgradeRefused with the status and one line for the client. Header names lower-case."""
    if method != "GET":
        raise UpgradeRefused(405, "a WebSocket upgrade uses GET")
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.initiate_upgrade_connection(
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers], target)
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        raise UpgradeRefused(status, f"bad WebSocket upgrade: {exc}") from None
    except h11.ProtocolError as exc:
        raise UpgradeRefused(400, f"bad WebSocket upgrade: {exc}") from None
    request = next((e for e in handshake.events() if isinstance(e, Request)), None)
    if request is None:
        raise UpgradeRefused(400, "bad WebSocket upgrade")
    if SUBPROTOCOL not in (p.strip() for p in request.subprotocols):
        raise UpgradeRefused(400, f"the WebSocket must offer subprotocol {SUBPROTOCOL}")
    init = _initiation(target)
    response = handshake.send(AcceptConnection(subprotocol=SUBPROTOCOL))
    connection = handshake.connection
    assert connection is not None  # accepted just above
    return Upgrade(init, response, WebSocketFraming(connection, max_message))


def _initiation(target: str) -> bytes:
    """The base64 Noise initiation from the query (percent-decoded first, as Go's r.Form)."""
    query = urllib.parse.urlsplit(target).query
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get(HANDSHAKE_PARAM, [""])
    if not values[0]:
        raise UpgradeRefused(400, f"missing {HANDSHAKE_PARAM} query parameter")
    try:
        return base64.b64decode(values[0], validate=True)
    except (binascii.Error, ValueError):
        raise UpgradeRefused(400, f"malformed {HANDSHAKE_PARAM} query parameter") from None


class ClientUpgrade:
    """The client's side of the upgrade, as the JS client sends it (for core/simclient.py)."""

    def __init__(self, host: str, init: bytes) -> None:
        self._hs = H11Handshake(ConnectionType.CLIENT)
        query = urllib.parse.urlencode({HANDSHAKE_PARAM: base64.b64encode(init).decode()})
        self.request = self._hs.send(Request(host=host, target=f"{TS2021_PATH}?{query}",
                                             subprotocols=[SUBPROTOCOL]))

    def receive(self, data: bytes) -> WebSocketFraming | None:
        """Feed the reply; the framing once the 101 is complete. ConnectionError if refused."""
        try:
            self._hs.receive_data(data)
        except RemoteProtocolError as exc:
            raise ConnectionError(f"bad WebSocket upgrade reply: {exc}") from None
        for event in self._hs.events():
            if isinstance(event, RejectConnection):
                raise ConnectionError(f"upgrade refused: HTTP {event.status_code}")
            if isinstance(event, AcceptConnection) and event.subprotocol != SUBPROTOCOL:
                raise ConnectionError(f"server chose subprotocol {event.subprotocol!r}")
        ws = self._hs.connection
        return None if ws is None else WebSocketFraming(ws, max_message=1 << 20)


class WebSocketFraming:
    """Binary messages <-> one byte stream, over a wsproto Connection (either side).

    ``unwrap`` returns the stream bytes that arrived; control frames to answer (pongs) wait in
    ``replies()``. A close from the peer raises PeerClosed, a violation ProtocolError; either
    way ``goodbye()`` then gives the close frame to send before the socket is closed.
    """

    def __init__(self, connection: Connection, max_message: int) -> None:
        self.ws = connection
        self.max_message = max_message
        self._message = 0  # bytes of the binary message being received so far
        self._out = bytearray()
        self._close: tuple[int, str] | None = None  # what goodbye() sends, if not already sent

    def wrap(self, data: bytes | bytearray) -> bytes:
        if self.ws.state is not ConnectionState.OPEN:
            return b""
        out = bytearray()
        view = memoryview(data)
        for start in range(0, len(data), OUT_MESSAGE):
            out += self.ws.send(BytesMessage(data=bytes(view[start:start + OUT_MESSAGE])))
        return bytes(out)

    def unwrap(self, data: bytes) -> bytes:
        if self.ws.state is not ConnectionState.OPEN:
            return b""  # closing: whatever still arrives is dropped
        self.ws.receive_data(data)
        out = bytearray()
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self._message += len(event.data)
                if self._message > self.max_message:
                    self._fail(CloseReason.MESSAGE_TOO_BIG,
                               f"WebSocket message over {self.max_message} bytes")
                out += event.data
                if event.message_finished:
                    self._message = 0
            elif isinstance(event, Ping):
                self._out += self.ws.send(event.response())
            elif isinstance(event, TextMessage):
                self._fail(CloseReason.UNSUPPORTED_DATA, "text WebSocket message (binary only)")
            elif isinstance(event, CloseConnection):
                if self._peer_closing():
                    self._close = (event.code, "")
                    raise PeerClosed(f"WebSocket closed by the client ({event.code})")
                self._fail(event.code, event.reason or "WebSocket protocol error")
        return bytes(out)

    def _peer_closing(self) -> bool:
        # A close frame from the peer; wsproto also reports a frame it cannot parse as a
        # close, but leaves the state open.
        return self.ws.state is ConnectionState.REMOTE_CLOSING

    def _fail(self, code: int, why: str) -> None:
        self._close = (int(code), why)
        raise ProtocolError(why)

    def replies(self) -> bytes:
        """Control frames to send now (pongs)."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def goodbye(self) -> bytes:
        """The last bytes before closing: pending replies and a close frame (normal closure
        when the server ends the session, else the code and reason of what went wrong)."""
        out = self.replies()
        code, why = self._close or (int(CloseReason.NORMAL_CLOSURE), "")
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            out += self.ws.send(CloseConnection(code=code, reason=why[:120]))
        return out
