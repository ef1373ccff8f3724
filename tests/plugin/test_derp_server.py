"""The embedded DERP server end to end on 127.0.0.1: real TLS, our own DERP clients.

The plugins (DERP and STUN objects) are driven through their hooks with a small stand-in for
core's ServerContext.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import Any

import pytest
from nacl.public import PrivateKey

from meshscale.config import Config, DerpConfig, DerpServerConfig
from meshscale.configvalues import HostPort, Url
from meshscale.contributions import HttpRoute, UpgradeRequest, UpgradeRoute
from meshscale.plugins import derp, stun
from meshscale.plugins.derp import frames
from meshscale.plugins.derp.client import DerpClient, insecure_client_context
from meshscale.plugins.derp.connection import ConnectionSettings
from meshscale.plugins.derp.frames import FrameType
from meshscale.plugins.stun import codec

LOOPBACK = "127.0.0.1"


class FakeServer:
    """What the plugins use of core's ServerContext."""

    def __init__(self, config: Config, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.known: set[bytes] = set()
        self.refreshes = 0
        self.stun = stun.StunPlugin(self)  # type: ignore[arg-type]
        self.derp = derp.DerpPlugin(self)  # type: ignore[arg-type]

    def plugin(self, name: str) -> object | None:
        return {"stun": self.stun, "derp": self.derp}.get(name)

    def node_key_known(self, node_key: bytes) -> bool:
        return node_key in self.known

    def derp_map(self) -> Mapping[str, Any]:
        return {}

    def refresh_derp_map(self) -> None:
        self.refreshes += 1

    def stats(self) -> Mapping[str, float]:
        return {}

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, name=name)


def make_config(tmp_path: Path, **server: Any) -> Config:
    srv = DerpServerConfig(
        tls_listen_addr=HostPort("127.0.0.1:0"),
        stun_listen_addr=HostPort("127.0.0.1:0"),
        **server,
    )
    return Config(data_dir=str(tmp_path), derp=DerpConfig(server=srv))


@contextlib.asynccontextmanager
async def running(
    config: Config, tmp_path: Path, settings: ConnectionSettings | None = None,
    server: FakeServer | None = None,
) -> AsyncIterator[FakeServer]:
    server = server or FakeServer(config, tmp_path)
    if settings is not None:
        server.derp.service().settings = settings
    await server.stun.meshscale_startup()
    await server.derp.meshscale_startup()
    try:
        yield server
    finally:
        await server.derp.meshscale_shutdown()
        server.stun.meshscale_shutdown()


def region_of(server: FakeServer) -> dict[str, Any]:
    (region,) = server.derp.meshscale_derp_regions(server.config)
    return dict(region)


async def dial(
    config: Config, server: FakeServer, *, known: bool = True, **kw: Any
) -> DerpClient:
    node = region_of(server)["Nodes"][0]
    key = PrivateKey.generate()
    if known:
        server.known.add(bytes(key.public_key))
    return await DerpClient.connect(
        node["HostName"], node["DERPPort"], private_key=key,
        ssl_context=insecure_client_context(), expect_sha256=node["CertName"], **kw,
    )


async def recv_type(client: DerpClient, ftype: int, wait: float = 5.0) -> frames.Frame:
    async with asyncio.timeout(wait):
        while True:
            frame = await client.recv()
            if frame.type == ftype:
                return frame


async def assert_closed(client: DerpClient, wait: float = 5.0) -> None:
    with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(wait):
            while True:
                await client.recv()


# -- the region and the listener ------------------------------------------------------------


async def test_region_advertises_tls_port_pinned_cert_and_stun(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert FakeServer(config, tmp_path).derp.meshscale_derp_regions(config) == []  # not started
    async with running(config, tmp_path) as server:
        region = region_of(server)
        node = region["Nodes"][0]
        svc = server.derp.service()
        assert region["RegionID"] == 999 and region["RegionCode"] == "meshscale"
        assert node["Name"] == "999a"
        assert node["HostName"] == node["IPv4"] == LOOPBACK
        assert node["IPv6"] == "none"
        assert node["DERPPort"] == svc.tls_port
        assert node["STUNPort"] == server.stun.bound_port
        assert node["CertName"].startswith("sha256-raw:")
        assert server.refreshes == 2  # once by STUN, once by DERP
        # The pin is the sha256 of the leaf the TLS port actually serves.
        _, writer = await asyncio.open_connection(
            LOOPBACK, node["DERPPort"], ssl=insecure_client_context()
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        assert node["CertName"] == "sha256-raw:" + hashlib.sha256(der).hexdigest()
        # ...and the STUN port answers.
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                reply.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(
            Proto, remote_addr=(LOOPBACK, node["STUNPort"])
        )
        transport.sendto(codec.binding_request(b"\x01" * 12))
        async with asyncio.timeout(5):
            assert codec.parse_binding_response(await reply) is not None
        transport.close()


async def test_key_cert_and_port_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        first = region_of(server)["Nodes"][0]
    config2 = make_config(tmp_path)
    async with running(config2, tmp_path) as server2:
        second = region_of(server2)["Nodes"][0]
        client = await dial(config2, server2)
        assert client.server_key == server2.derp.service().relay.server_public  # type: ignore[union-attr]
        await client.close()
    assert second["CertName"] == first["CertName"]
    assert second["DERPPort"] == first["DERPPort"]
    assert (tmp_path / "derp_server_private.key").read_text().startswith("privkey:")


async def test_no_region_when_not_added_automatically(tmp_path: Path) -> None:
    config = make_config(tmp_path, automatically_add_embedded_derp_region=False)
    async with running(config, tmp_path) as server:
        assert server.derp.meshscale_derp_regions(config) == []


async def test_https_main_listener_is_advertised_instead(tmp_path: Path) -> None:
    config = dataclasses.replace(
        make_config(tmp_path),
        server_url=Url("https://derp.example.com"), tls_cert_path="c", tls_key_path="k",
    )
    async with running(config, tmp_path) as server:
        node = region_of(server)["Nodes"][0]
        assert server.derp.service().tls_port is None
        assert node["HostName"] == "derp.example.com" and node["DERPPort"] == 443
        assert "CertName" not in node and "IPv4" not in node


# -- relaying -------------------------------------------------------------------------------


async def test_two_clients_relay_over_tls(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        a = await dial(config, server)
        b = await dial(config, server)
        assert a.server_info == {"version": 2}
        await a.note_preferred(True)
        for i in range(200):  # one burst, more than a queue holds: written through, not dropped
            a.send_nowait(b.public_key, b"a->b %d" % i)
        await a.writer.drain()
        got = [await asyncio.wait_for(b.recv_packet(), 5) for _ in range(200)]
        assert got == [(a.public_key, b"a->b %d" % i) for i in range(200)]
        await b.send(a.public_key, b"b->a")
        assert await asyncio.wait_for(a.recv_packet(), 5) == (b.public_key, b"b->a")
        # The largest packet there is.
        big = bytes(range(256)) * 256
        await a.send(b.public_key, big)
        assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, big)
        await a.ping(b"pingpong")
        assert (await recv_type(a, FrameType.PONG)).payload == b"pingpong"
        # b heard from a: when a leaves, b is told.
        await a.close()
        gone = await recv_type(b, FrameType.PEER_GONE)
        assert gone.payload == a.public_key + b"\x00"
        await b.close()
        relay = server.derp.service().relay
        assert relay is not None and relay.stats.packets_sent >= 202


async def test_unknown_node_is_refused_by_verify_clients(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
            await dial(config, server, known=False)
        relay = server.derp.service().relay
        assert relay is not None and relay.stats.refused == 1
        assert relay.connection_count() == 0


async def test_verify_clients_off_admits_anyone(tmp_path: Path) -> None:
    config = make_config(tmp_path, verify_clients=False)
    async with running(config, tmp_path) as server:
        client = await dial(config, server, known=False)
        await client.close()


async def test_mesh_key_bypasses_verification(tmp_path: Path) -> None:
    from meshscale.plugins.derp.handshake import ClientInfo

    mesh = "ab" * 32
    config = make_config(tmp_path, mesh_key=mesh)
    async with running(config, tmp_path) as server:
        watcher = await dial(config, server, known=False, info=ClientInfo(mesh_key=mesh))
        await watcher.write_raw(frames.WATCH_CONNS)
        member = await dial(config, server)
        present = await recv_type(watcher, FrameType.PEER_PRESENT)
        assert frames.parse_peer_present(present.payload).key in (
            member.public_key, watcher.public_key
        )
        await member.close()
        await watcher.close()


BAD_FRAMES = {
    "short": b"\x04\x00\x00\x00\x05short",  # SendPacket without a whole key
    # A header announcing more than 1 MiB: refused before any payload arrives.
    "oversized-frame": b"\x04" + (frames.MAX_FRAME_SIZE + 1).to_bytes(4, "big"),
    # A whole SendPacket whose packet is one byte over 64 KiB.
    "oversized-packet": frames.header(FrameType.SEND_PACKET, 32 + frames.MAX_PACKET_SIZE + 1)
    + bytes(32 + frames.MAX_PACKET_SIZE + 1),
    "unauthorised": frames.WATCH_CONNS,  # needs the mesh key
}


@pytest.mark.parametrize("bad", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
async def test_bad_frame_closes_only_that_connection(tmp_path: Path, bad: bytes) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        a, b, c = [await dial(config, server) for _ in range(3)]
        c.writer.write(bad)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await c.writer.drain()
        await assert_closed(c)
        await a.send(b.public_key, b"still relaying")
        assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"still relaying")
        relay = server.derp.service().relay
        assert relay is not None and relay.stats.protocol_errors == 1
        await a.close()
        await b.close()


async def test_stalled_receiver_drops_oldest_and_never_blocks_senders(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path, ConnectionSettings(high_water=64 << 10)) as server:
        a, b, c = [await dial(config, server) for _ in range(3)]
        packet = bytes(16 << 10)
        # b never reads. 32 MB towards it fill the kernel buffers, then the bounded queue.
        relay = server.derp.service().relay
        assert relay is not None
        async with asyncio.timeout(20):
            for _ in range(2048):
                a.send_nowait(b.public_key, packet)
                if a.writer.transport.get_write_buffer_size() > 1 << 20:
                    await a.writer.drain()
            # Frames are handled in order: a's pong means all its packets were relayed or
            # dropped, and that a itself was never blocked.
            await a.ping(b"still ok")
            assert (await recv_type(a, FrameType.PONG)).payload == b"still ok"
        assert relay.stats.packets_recv == 2048
        assert relay.stats.dropped_queue_full > 0
        await c.send(a.public_key, b"hi a")
        assert await asyncio.wait_for(a.recv_packet(), 5) == (c.public_key, b"hi a")
        for client in (a, b, c):
            await client.close()


async def test_unknown_frame_types_are_skipped(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        a, b = await dial(config, server), await dial(config, server)
        await a.write_raw(frames.encode(0x7F, b"from the future") + frames.encode(0x16))
        await a.send(b.public_key, b"after")
        assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"after")
        await a.close()
        await b.close()


async def test_silent_client_gets_keepalives_and_login_timeout(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    settings = ConnectionSettings(keepalive=0.2, keepalive_jitter=0.05, login_timeout=0.5)
    async with running(config, tmp_path, settings) as server:
        a = await dial(config, server)
        assert (await recv_type(a, FrameType.KEEP_ALIVE, wait=3)).payload == b""
        await a.close()
        # A client that never sends ClientInfo is dropped after the login timeout.
        node = region_of(server)["Nodes"][0]
        reader, writer = await asyncio.open_connection(
            LOOPBACK, node["DERPPort"], ssl=insecure_client_context()
        )
        writer.write(
            b"GET /derp HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n\r\n"
        )
        async with asyncio.timeout(5):
            data = await reader.read()  # 101, ServerKey, then EOF
        assert data.startswith(b"HTTP/1.1 101") and b"DERP\xf0\x9f\x94\x91" in data
        writer.close()


# -- HTTP on the TLS port and the main listener -----------------------------------------------


async def _https(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=insecure_client_context())
    writer.write(request)
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    return data


async def test_probes_and_generate_204_on_the_tls_port(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        port = server.derp.service().tls_port
        assert port is not None
        probe = await _https(port, b"GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n")
        assert probe.startswith(b"HTTP/1.1 200") and b"Access-Control-Allow-Origin: *" in probe
        head = await _https(port, b"HEAD /derp/latency-check HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        g = await _https(
            port, b"GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: abc\r\n\r\n"
        )
        assert g.startswith(b"HTTP/1.1 204") and b"X-Tailscale-Response: response abc" in g
        no_up = await _https(port, b"GET /derp HTTP/1.1\r\nHost: x\r\n\r\n")
        assert no_up.startswith(b"HTTP/1.1 426")
        assert (await _https(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 404"
        )
        assert (await _https(port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")


async def _front_door(route: UpgradeRoute) -> asyncio.Server:
    """A stand-in for core's front door: parse the head, hand the socket to the route."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = [
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        ]
        peer = writer.get_extra_info("peername")
        await route.handler(UpgradeRequest(method, target, headers, reader, writer, peer[:2]))

    return await asyncio.start_server(handle, LOOPBACK, 0)


async def test_main_listener_upgrade_hook_relays(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    server = FakeServer(config, tmp_path)
    (route,) = server.derp.meshscale_http_upgrades(config)
    assert route.path == "/derp" and route.protocols == {"derp", "websocket"}
    async with running(config, tmp_path, server=server):
        door = await _front_door(route)
        port = door.sockets[0].getsockname()[1]
        keys = [PrivateKey.generate() for _ in range(2)]
        server.known.update(bytes(k.public_key) for k in keys)
        a = await DerpClient.connect(LOOPBACK, port, private_key=keys[0])
        b = await DerpClient.connect(LOOPBACK, port, private_key=keys[1])
        await a.send(b.public_key, b"plain http")
        assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"plain http")
        await a.close()
        await b.close()
        door.close()


async def test_websocket_variant_relays(tmp_path: Path) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request

    from meshscale.plugins.derp import handshake

    config = make_config(tmp_path)
    async with running(config, tmp_path) as server:
        port = server.derp.service().tls_port
        assert port is not None
        reader, writer = await asyncio.open_connection(
            LOOPBACK, port, ssl=insecure_client_context()
        )
        ws = WSConnection(ConnectionType.CLIENT)
        decoder = frames.FrameDecoder()
        accepted: list[str | None] = []

        async def next_frame() -> frames.Frame:
            pending: list[frames.Frame] = []
            while not pending:
                ws.receive_data(await reader.read(65536))
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        accepted.append(event.subprotocol)
                    elif isinstance(event, BytesMessage):
                        pending += decoder.feed(bytes(event.data))
            assert len(pending) == 1
            return pending[0]

        key = PrivateKey.generate()
        server.known.add(bytes(key.public_key))
        writer.write(ws.send(Request(host=LOOPBACK, target="/derp", subprotocols=["derp"])))
        async with asyncio.timeout(5):
            server_key = frames.parse_server_key((await next_frame()).payload)
            info = handshake.client_info_frame(key, server_key, handshake.ClientInfo())
            writer.write(ws.send(BytesMessage(data=info)))
            assert (await next_frame()).type == FrameType.SERVER_INFO
            assert accepted == ["derp"]
            # A TLS client sends to the WebSocket client, and back.
            peer = await dial(config, server)
            await peer.send(bytes(key.public_key), b"to ws")
            got = await next_frame()
            assert got == frames.Frame(FrameType.RECV_PACKET, peer.public_key + b"to ws")
            writer.write(ws.send(BytesMessage(data=frames.send_packet(peer.public_key, b"back"))))
            assert await peer.recv_packet() == (bytes(key.public_key), b"back")
        await peer.close()
        writer.close()


async def test_http_routes(tmp_path: Path) -> None:
    from quart import Quart

    config = make_config(tmp_path)
    server = FakeServer(config, tmp_path)
    routes: list[HttpRoute] = list(server.derp.meshscale_http_routes(config))
    assert {r.path for r in routes} == {
        "/verify", "/derp", "/derp/probe", "/derp/latency-check", "/generate_204"
    }
    app = Quart(__name__)
    for r in routes:
        app.add_url_rule(r.path, r.name or r.path, r.view, methods=list(r.methods))
    client = app.test_client()
    known = PrivateKey.generate()
    node_key = "nodekey:" + bytes(known.public_key).hex()
    # Before start-up nothing is known.
    resp = await client.post("/verify", data=json.dumps({"NodePublic": node_key}))
    assert resp.status_code == 200 and await resp.get_json() == {"Allow": False}
    async with running(config, tmp_path, server=server):
        server.known.add(bytes(known.public_key))
        resp = await client.post(
            "/verify", data=json.dumps({"NodePublic": node_key, "Source": "192.0.2.1"})
        )
        assert await resp.get_json() == {"Allow": True}
        other = "nodekey:" + "00" * 32
        resp = await client.post("/verify", data=json.dumps({"NodePublic": other}))
        assert await resp.get_json() == {"Allow": False}
        resp = await client.post("/verify", data=b"{not json")
        assert resp.status_code == 400
        resp = await client.get("/derp/probe")
        assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
        resp = await client.get("/generate_204", headers={"X-Tailscale-Challenge": "c1"})
        assert resp.status_code == 204 and resp.headers["X-Tailscale-Response"] == "response c1"
        resp = await client.get("/derp")
        assert resp.status_code == 426
