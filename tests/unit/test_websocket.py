"""``/ts2021`` over WebSocket, sans-IO, byte for byte (core/websocket.py; protocol.md §3.9).

Expected frames are written out by hand from RFC 6455 §5.2, not produced by wsproto."""

from __future__ import annotations

import base64
import struct
import urllib.parse

import h11
import pytest

from meshscale.errors import ProtocolError
from meshscale.websocket import (
    ClientUpgrade,
    PeerClosed,
    UpgradeRefused,
    WebSocketFraming,
    accept,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3: its accept value is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
MASK = b"\x37\xfa\x21\x3d"  # RFC 6455 §5.7's example mask


def headers(**over: str | None) -> list[tuple[str, str]]:
    base: dict[str, str | None] = {
        "host": "ctrl.example:8080", "connection": "Upgrade", "upgrade": "websocket",
        "sec-websocket-version": "13", "sec-websocket-key": KEY,
        "sec-websocket-protocol": "tailscale-control-protocol",
        "origin": "https://login.example",
    }
    base.update({k.replace("_", "-"): v for k, v in over.items()})
    return [(k, v) for k, v in base.items() if v is not None]


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    assert len(payload) < 126
    body = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + MASK + body


def framing(max_message: int = 32768) -> WebSocketFraming:
    return accept("GET", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", headers(),
                  max_message).framing


# -- the upgrade ---------------------------------------------------------------------------------


def test_accept_answers_101_with_the_subprotocol_and_no_extensions() -> None:
    up = accept("GET", "/ts2021?X-Tailscale-Handshake=%2B%2F8%3D",
                headers(sec_websocket_protocol="chat, tailscale-control-protocol",
                        sec_websocket_extensions="permessage-deflate"), 32768)
    assert up.response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: tailscale-control-protocol\r\n\r\n")
    assert up.init == b"\xfb\xff"  # "+/8=" percent-decoded, then base64-decoded


def test_go_query_encoding_of_a_real_initiation() -> None:
    init = bytes(range(101))
    query = urllib.parse.urlencode({"X-Tailscale-Handshake": base64.b64encode(init).decode()})
    assert "%2B" in query or "%2F" in query or "%3D" in query
    assert accept("GET", f"/ts2021?{query}", headers(), 32768).init == init


@pytest.mark.parametrize(("method", "target", "over", "status", "text"), [
    ("POST", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", {}, 405, "uses GET"),
    ("GET", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", {"sec_websocket_key": None}, 400,
     "Sec-WebSocket-Key"),
    ("GET", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", {"sec_websocket_version": "8"}, 426,
     "Sec-WebSocket-Version"),
    ("GET", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", {"connection": "keep-alive"}, 400,
     "Connection: Upgrade"),
    ("GET", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", {"sec_websocket_protocol": None}, 400,
     "subprotocol tailscale-control-protocol"),
    ("GET", "/ts2021?X-Tailscale-Handshake=AA%3D%3D", {"sec_websocket_protocol": "derp"}, 400,
     "subprotocol tailscale-control-protocol"),
    ("GET", "/ts2021", {}, 400, "missing X-Tailscale-Handshake query parameter"),
    ("GET", "/ts2021?X-Tailscale-Handshake=", {}, 400, "missing X-Tailscale-Handshake"),
    ("GET", "/ts2021?x-tailscale-handshake=AA%3D%3D", {}, 400, "missing"),  # case matters
    ("GET", "/ts2021?X-Tailscale-Handshake=A*A", {}, 400, "malformed X-Tailscale-Handshake"),
])
def test_refusals(method: str, target: str, over: dict[str, str | None], status: int,
                  text: str) -> None:
    with pytest.raises(UpgradeRefused) as info:
        accept(method, target, headers(**over), 32768)
    assert info.value.status == status and text in info.value.text
    assert "\n" not in info.value.text


# -- framing: what the server sends -------------------------------------------------------------


def test_wrap_makes_unmasked_binary_messages_of_at_most_4096_bytes() -> None:
    f = framing()
    assert f.wrap(b"abc") == b"\x82\x03abc"
    assert f.wrap(b"") == b""
    out = f.wrap(b"x" * 5000)
    assert out == (b"\x82\x7e\x10\x00" + b"x" * 4096 + b"\x82\x7e\x03\x88" + b"x" * 904)


# -- framing: what the server receives ----------------------------------------------------------


def test_unwrap_concatenates_messages_and_fragments() -> None:
    f = framing()
    stream = (masked(0x2, b"Hel") + masked(0x2, b"lo", fin=False) + masked(0x0, b", ", fin=False)
              + masked(0x0, b"world"))
    got = b"".join(f.unwrap(stream[i:i + 1]) for i in range(len(stream)))  # byte by byte
    assert got == b"Hello, world"
    assert f.replies() == b""


def test_ping_is_answered_with_a_pong_in_replies() -> None:
    f = framing()
    assert f.unwrap(masked(0x9, b"\x01\x02") + masked(0x2, b"z")) == b"z"
    assert f.replies() == b"\x8a\x02\x01\x02"
    assert f.replies() == b""


def test_oversize_message_is_refused_with_1009_before_it_is_buffered() -> None:
    f = framing(max_message=4096)
    header = b"\x82\xff" + struct.pack(">Q", 1 << 40) + MASK  # declares a terabyte
    assert f.unwrap(header + b"\0" * 4000) != b""  # streamed: no wait for the whole frame
    with pytest.raises(ProtocolError, match="over 4096 bytes"):
        f.unwrap(b"\0" * 200)
    bye = f.goodbye()
    assert bye[:1] == b"\x88" and bye[1] == len(bye) - 2
    assert bye[2:4] == b"\x03\xf1" and bye[4:] == b"WebSocket message over 4096 bytes"
    assert f.unwrap(b"\0" * 100) == b"" and f.goodbye() == b""  # closed: nothing more


def test_a_message_limit_spans_fragments() -> None:
    f = framing(max_message=4096)
    f.unwrap(masked(0x2, b"a" * 100, fin=False))
    with pytest.raises(ProtocolError):
        for _ in range(41):
            f.unwrap(masked(0x0, b"a" * 100, fin=False))
    # ...but each message starts again from zero.
    g = framing(max_message=4096)
    for _ in range(100):
        g.unwrap(masked(0x2, b"a" * 100))


def test_text_message_is_refused_with_1003() -> None:
    f = framing()
    with pytest.raises(ProtocolError, match="text"):
        f.unwrap(masked(0x1, b"hello"))
    why = b"text WebSocket message (binary only)"
    assert f.goodbye() == b"\x88" + bytes([2 + len(why)]) + b"\x03\xeb" + why


def test_unmasked_client_frame_is_refused_with_1002() -> None:
    f = framing()
    with pytest.raises(ProtocolError):
        f.unwrap(b"\x82\x03abc")
    assert f.goodbye()[2:4] == b"\x03\xea"


def test_close_from_the_client_is_echoed() -> None:
    f = framing()
    with pytest.raises(PeerClosed):
        f.unwrap(masked(0x8, b"\x03\xe8"))
    assert f.goodbye() == b"\x88\x02\x03\xe8"


def test_server_side_close_is_a_normal_closure() -> None:
    f = framing()
    assert f.goodbye() == b"\x88\x02\x03\xe8"
    assert f.wrap(b"late") == b""  # nothing goes out after the close frame


def test_client_upgrade_round_trip_with_accept() -> None:
    """The simulated client's request is what the JS client sends, and accept() takes it."""
    init = bytes(range(101))
    client = ClientUpgrade("ctrl.example:8080", init)
    server = h11.Connection(h11.SERVER)
    server.receive_data(client.request)
    req = server.next_event()
    assert isinstance(req, h11.Request) and req.method == b"GET"
    assert req.target.startswith(b"/ts2021?X-Tailscale-Handshake=") and b"%3D" in req.target
    hdrs = [(k.decode(), v.decode()) for k, v in req.headers]
    assert ("sec-websocket-protocol", "tailscale-control-protocol") in hdrs
    up = accept("GET", req.target.decode(), hdrs, 32768)
    assert up.init == init
    framing = client.receive(up.response + up.framing.wrap(b"hello"))
    assert framing is not None and framing.unwrap(b"") == b"hello"
    # Client frames are masked (RFC 6455 §5.3), and the server's framing reads them.
    sent = framing.wrap(b"x" * 10)
    assert sent[1] & 0x80 and up.framing.unwrap(sent) == b"x" * 10


def test_client_upgrade_refused() -> None:
    client = ClientUpgrade("h", b"\0")
    with pytest.raises(ConnectionError, match="HTTP 400"):
        client.receive(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
