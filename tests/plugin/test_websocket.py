"""``/ts2021`` over WebSocket (issue 18; protocol.md §3.9) against an in-process server.

The simulated client speaks it as Tailscale's JS/WASM client does (GET, the Noise initiation in
the query, subprotocol ``tailscale-control-protocol``, binary messages); the refusals and limits
are checked with hand-written requests and frames, as an attacker would send them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.server import Server
from meshscale.simclient import ControlConnection, SimNode
from meshscale.simhandshake import CAPVER, fetch_server_key, make_initiation
from tests.plugin.simnodes import next_with
from tests.plugin.test_bad_input import still_serving
from tests.plugin.test_transport_limits import ATTACKER, attacker_socket, read_all

pytestmark = pytest.mark.asyncio

SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example


def key_for(server: Server) -> str:
    assert server.state is not None
    user = server.state.users.get(1) or server.state.create_user("alice")
    return server.state.create_key(user, reusable=True)[1]


async def ws_node(server: Server, name: str) -> SimNode:
    node = SimNode(name, ControlConnection(websocket=True))
    await node.conn.connect("127.0.0.1", server.main_port)
    return node


def upgrade_request(port: int, *, query: str | None = None, protocol: str | None =
                    "tailscale-control-protocol", key: str | None = SAMPLE_KEY,
                    method: str = "GET") -> bytes:
    lines = [f"{method} /ts2021{'?' + query if query is not None else ''} HTTP/1.1",
             f"Host: 127.0.0.1:{port}", "Connection: Upgrade", "Upgrade: websocket",
             "Sec-WebSocket-Version: 13"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame per RFC 6455 §5.2, written by hand (not by wsproto)."""
    mask = os.urandom(4)
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else (
        bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
        else bytes([0x80 | 127]) + struct.pack(">Q", n))
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode]) + size + mask + body


async def handshake_query(server: Server) -> str:
    pub = await fetch_server_key("127.0.0.1", server.main_port)
    init, _, _ = make_initiation(X25519PrivateKey.generate(), pub, CAPVER)
    return urllib.parse.urlencode({"X-Tailscale-Handshake": base64.b64encode(init).decode()})


async def upgraded(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A completed WebSocket upgrade with a valid Noise initiation; (reader, writer, the 101,
    the handshake response message and the server's first record: its HTTP/2 SETTINGS)."""
    reader, writer = await attacker_socket(server.main_port)
    writer.write(upgrade_request(server.main_port, query=await handshake_query(server)))
    got = await reader.readuntil(b"\r\n\r\n")
    got += await reader.readexactly(2 + 51)
    frame = await asyncio.wait_for(reader.readexactly(2), 5)
    assert frame[0] == 0x82 and frame[1] < 126, frame
    return reader, writer, got + frame + await reader.readexactly(frame[1])


# -- the JS client's path works ------------------------------------------------------------------


async def test_register_and_map_over_websocket(server_with: Callable[..., Any]) -> None:
    server = await server_with()
    key = key_for(server)
    a = await ws_node(server, "wasm-a")
    assert (await a.register(key))["MachineAuthorized"] is True
    sa = a.open_stream()
    first = await sa.next()
    assert first is not None and first["Node"]["Key"] == a.node_key_text
    assert first["Node"]["Name"].startswith("wasm-a.")
    # A second WebSocket node and a raw one: each sees the others arrive, as deltas.
    b = await ws_node(server, "wasm-b")
    await b.register(key)
    delta = await next_with(sa, "PeersChanged")
    assert [p["Key"] for p in delta["PeersChanged"]] == [b.node_key_text]
    sb = b.open_stream()
    full = await sb.next()
    assert full is not None and [p["Key"] for p in full["Peers"]] == [a.node_key_text]
    raw = SimNode("raw-c")
    await raw.conn.connect("127.0.0.1", server.main_port)
    await raw.register(key)
    for s in (sa, sb):
        got = await next_with(s, "PeersChanged")
        assert [p["Key"] for p in got["PeersChanged"]] == [raw.node_key_text]
    # Lite updates (a request while the stream is open) go over the same WebSocket.
    assert await a.lite_update(["192.0.2.1:41641"]) == 200
    for node in (a, b, raw):
        await node.conn.close()


async def test_upgrade_reply_and_first_message_bytes(server_with: Callable[..., Any]) -> None:
    server = await server_with()
    reader, writer, got = await upgraded(server)
    head, messages = got.split(b"\r\n\r\n", 1)
    first, second = messages[:53], messages[53:]
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 101 Switching Protocols"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
    assert headers["sec-websocket-protocol"] == "tailscale-control-protocol"
    assert "sec-websocket-extensions" not in headers  # no compression
    # The Noise response: one unmasked, final, binary frame of 51 bytes, message type 2.
    assert first[:2] == b"\x82\x33" and first[2] == 2
    # Then the server's HTTP/2 SETTINGS in one Noise record (type 4), in a binary message.
    record = second[2:]
    assert second[1] == len(record) and record[0] == 4
    assert struct.unpack(">H", record[1:3])[0] == len(record) - 3
    # A ping is answered with a pong carrying the same payload.
    writer.write(masked(0x9, b"hi"))
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x8a\x02hi"
    writer.close()


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "status", "text"), [
    ({"key": None}, 400, b"Sec-WebSocket-Key"),
    ({"protocol": None}, 400, b"subprotocol tailscale-control-protocol"),
    ({"protocol": "derp"}, 400, b"subprotocol tailscale-control-protocol"),
    ({"query": ""}, 400, b"missing X-Tailscale-Handshake query parameter"),
    ({"query": "X-Tailscale-Handshake=%%%"}, 400, b"malformed X-Tailscale-Handshake"),
    ({"query": "X-Tailscale-Handshake=AAAA"}, 400, b"initiation is 3 bytes, want 101"),
    ({"method": "POST", "query": "x=1"}, 405, b"GET"),
])
async def test_bad_upgrades_are_refused_in_one_line(
        server_with: Callable[..., Any], kwargs: dict[str, Any], status: int,
        text: bytes) -> None:
    server = await server_with()
    reader, writer = await attacker_socket(server.main_port)
    writer.write(upgrade_request(server.main_port, **kwargs))
    reply = await read_all(reader, 5)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert text in body and body.count(b"\n") == 1, body
    writer.close()
    await still_serving(server)


async def test_oversize_message_closes_with_1009(server_with: Callable[..., Any]) -> None:
    server = await server_with(max_websocket_message=8192)
    reader, writer, _ = await upgraded(server)
    # One frame whose header declares 1 GiB: refused once 8 KiB of it arrived, not buffered.
    mask = b"\0\0\0\0"
    writer.write(b"\x82" + bytes([0x80 | 127]) + struct.pack(">Q", 1 << 30) + mask
                 + b"\0" * 16384)
    reply = await read_all(reader, 5)
    assert reply[:2] == b"\x88" + bytes([len(reply) - 2]), reply
    assert struct.unpack(">H", reply[2:4])[0] == 1009
    assert b"over 8192 bytes" in reply[4:]
    writer.close()
    await still_serving(server)


async def test_text_message_closes_with_1003(server_with: Callable[..., Any]) -> None:
    server = await server_with()
    reader, writer, _ = await upgraded(server)
    writer.write(masked(0x1, b"PRI * HTTP/2.0"))
    reply = await read_all(reader, 5)
    assert reply[:1] == b"\x88" and struct.unpack(">H", reply[2:4])[0] == 1003
    writer.close()


async def test_unmasked_client_frame_closes_with_1002(server_with: Callable[..., Any]) -> None:
    server = await server_with()
    reader, writer, _ = await upgraded(server)
    writer.write(b"\x82\x03abc")
    reply = await read_all(reader, 5)
    assert reply[:1] == b"\x88" and struct.unpack(">H", reply[2:4])[0] == 1002
    writer.close()


# -- the raw path's limits and deadlines hold here too -------------------------------------------


async def test_no_http2_preface_is_closed_at_the_handshake_deadline(
        server_with: Callable[..., Any]) -> None:
    server = await server_with(handshake_timeout=1)
    reader, writer, _ = await upgraded(server)
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await read_all(reader, 5)
    assert 0.8 < loop.time() - start < 4
    assert reply == b"\x88\x02\x03\xe8"  # a normal close frame, then the socket closes
    writer.close()


async def test_idle_session_is_closed(server_with: Callable[..., Any]) -> None:
    server = await server_with(idle_timeout=1)
    node = await ws_node(server, "idle")
    await node.register(key_for(server))
    await asyncio.wait_for(node.conn.closed.wait(), 5)


async def test_request_head_deadline(server_with: Callable[..., Any]) -> None:
    server = await server_with(header_timeout=1)
    reader, writer = await attacker_socket(server.main_port)
    writer.write(upgrade_request(server.main_port)[:40])  # and never the rest
    reply = await read_all(reader, 5)
    assert reply.startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_per_source_cap_counts_websocket_connections(
        server_with: Callable[..., Any]) -> None:
    server = await server_with(max_connections_per_ip=2, uncapped_sources=[])
    held = [await upgraded(server) for _ in range(2)]
    reader, writer = await attacker_socket(server.main_port)
    writer.write(upgrade_request(server.main_port, query=await handshake_query(server)))
    reply = await read_all(reader, 5)
    assert reply.startswith(b"HTTP/1.1 503 ") and f"from {ATTACKER}".encode() in reply
    for _, w, _ in held:
        w.close()
    writer.close()
