"""Control-protocol behaviour with protocol-level simulated nodes against an in-process server:
full maps, deltas, patches, key rotation, logout, expiry, ephemeral nodes, names, tags."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from meshscale.server import Server
from meshscale.simclient import MapStream, SimNode
from tests.conftest import Backend
from tests.plugin.simnodes import join, next_with

pytestmark = pytest.mark.asyncio




async def patch_with(stream: MapStream, field: str, node_id: int | None = None,
                     timeout: float = 5.0) -> dict[str, Any]:
    """The next PeersChangedPatch entry that carries ``field`` (about ``node_id`` if given).

    Patches of a node every peer sees are broadcast, so a stream may also see its own node's
    (clients ignore those); tests name the node they mean.
    """
    while True:
        msg = await next_with(stream, "PeersChangedPatch", timeout)
        for entry in msg["PeersChangedPatch"]:
            if field in entry and node_id in (None, entry["NodeID"]):
                return dict(entry)


@pytest.fixture
async def server(meshscale_server_factory: Callable[..., Any], backend: Backend) -> Server:
    srv: Server = await meshscale_server_factory(
        plugins=[backend.name], database=backend.database,
        node={"ephemeral": {"inactivity_timeout": "1s"}},
    )
    return srv


@pytest.fixture
def key(server: Server) -> str:
    assert server.state is not None
    user = server.state.create_user("alice", email="alice@example.com")
    return server.state.create_key(user, reusable=True)[1]


async def test_full_map_then_deltas(server: Server, key: str) -> None:
    a, sa, first = await join(server, key, "laptop")
    assert first is not None and sa is not None
    me = first["Node"]
    assert me["Addresses"] == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]
    assert me["Name"] == "laptop.meshscale.net." and me["MachineAuthorized"] is True
    assert me["Key"] == a.node_key_text
    assert first["PacketFilter"] == [
        {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
    ]
    assert first["DERPMap"]["Regions"] == {}  # no DERP plugin loaded in this server
    assert first["DNSConfig"]["Domains"] == ["meshscale.net"]
    assert first["Debug"] == {"DisableLogTail": True}
    assert [p["LoginName"] for p in first["UserProfiles"]] == ["alice@example.com"]
    assert "Peers" not in first

    b, _sb, bfirst = await join(server, key, "phone")
    assert bfirst is not None and [p["ID"] for p in bfirst["Peers"]] == [me["ID"]]
    delta = await next_with(sa, "PeersChanged")
    (peer,) = delta["PeersChanged"]
    assert peer["Key"] == b.node_key_text
    assert peer["Addresses"] == ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]
    # Registration carries no disco key; b's first map request does, and it follows as a patch.
    # Its stream opening also brings it online; changes of one loop turn travel together.
    disco = await patch_with(sa, "DiscoKey", peer["ID"])
    assert disco["DiscoKey"] == b.disco_key_text
    online = disco if "Online" in disco else await patch_with(sa, "Online", peer["ID"])
    assert online["NodeID"] == peer["ID"] and online["Online"] is True

    # An endpoint/DERP update from b reaches a as a patch, not a whole node.
    assert await b.lite_update(["127.0.0.1:41641"], derp=999) == 200
    patch = await patch_with(sa, "Endpoints", peer["ID"])
    assert patch == {"NodeID": peer["ID"], "Endpoints": ["127.0.0.1:41641"], "DERPRegion": 999}
    # Deleting b removes it from a's map.
    assert server.lifecycle is not None
    server.lifecycle.delete(peer["ID"])
    assert (await next_with(sa, "PeersRemoved"))["PeersRemoved"] == [peer["ID"]]
    assert server.mapper is not None
    sent = server.mapper.sessions[me["ID"]].sent
    assert sent["full"] == 1 and sent["delta"] >= 3


async def test_names_are_sanitized_and_deduplicated(server: Server, key: str) -> None:
    _, _, first = await join(server, key, "My Box", stream=True)
    _, _, second = await join(server, key, "my-box", stream=True)
    assert first is not None and second is not None
    assert first["Node"]["Name"] == "my-box.meshscale.net."
    name = second["Node"]["Name"]
    assert name.startswith("my-box-") and name.endswith(".meshscale.net.") and len(name) == 30


async def test_key_rotation_keeps_id_and_addresses(server: Server, key: str) -> None:
    _a, sa, first = await join(server, key, "a")
    b, _, bfirst = await join(server, key, "b")
    assert sa is not None and bfirst is not None and first is not None
    old_text = b.node_key_text
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    b.node_key = X25519PrivateKey.generate()
    resp = await b.register(None, OldNodeKey=old_text)
    assert resp.get("MachineAuthorized") is True, resp
    p = await patch_with(sa, "Key", bfirst["Node"]["ID"])
    assert p["NodeID"] == bfirst["Node"]["ID"] and p["Key"] == b.node_key_text
    node = server.state.by_node_key(bytes.fromhex(b.node_key_text[8:]))  # type: ignore[union-attr]
    assert node is not None and node.ipv4 == "100.64.0.2"


async def test_rotation_with_someone_elses_old_key_is_refused(server: Server, key: str) -> None:
    a, _, _ = await join(server, key, "a", stream=False)
    b, _, _ = await join(server, key, "b", stream=False)
    resp = await b.register(None, OldNodeKey=a.node_key_text, NodeKey=a.node_key_text)
    assert resp == {"Error": "node key is registered to a different machine"}


async def test_logout_expires_the_node_and_ephemeral_logout_deletes_it(server: Server,
                                                                       key: str) -> None:
    assert server.state is not None
    a, _, _ = await join(server, key, "a", stream=False)
    resp = await a.register(None, Expiry="1970-01-01T00:02:03Z")
    assert resp["NodeKeyExpired"] is True and resp["MachineAuthorized"] is False
    node = server.state.by_node_key(bytes.fromhex(a.node_key_text[8:]))
    assert node is not None and node.expired()

    user = server.state.user("alice")
    _, eph = server.state.create_key(user, ephemeral=True)
    e, _, _ = await join(server, eph, "eph", stream=False)
    resp = await e.register(None, Expiry="1970-01-01T00:02:03Z")
    assert resp["NodeKeyExpired"] is True
    assert [n.hostname for n in server.state.nodes.values()] == ["a"]


async def test_shortening_expiry_is_allowed_and_extending_is_not(server: Server,
                                                                 key: str) -> None:
    a, _, _ = await join(server, key, "a", stream=False)
    resp = await a.register(None, Expiry="2099-01-01T00:00:00Z")
    assert resp["MachineAuthorized"] is True  # no expiry yet: setting one shortens it
    resp = await a.register(None, Expiry="2100-01-01T00:00:00Z")
    assert resp == {"Error": "extending key is not allowed"}


async def test_ephemeral_node_goes_after_inactivity(server: Server) -> None:
    assert server.state is not None
    user = server.state.create_user("eve")
    _, eph = server.state.create_key(user, ephemeral=True)
    node, _stream, _ = await join(server, eph, "tmp")
    assert len(server.state.nodes) == 1 and next(iter(server.state.nodes.values())).ephemeral
    await node.conn.close()  # stream ends: the 1 s inactivity timer starts
    for _ in range(50):
        if not server.state.nodes:
            break
        await asyncio.sleep(0.1)
    assert server.state.nodes == {}


async def test_reconnect_cancels_ephemeral_deletion(server: Server) -> None:
    assert server.state is not None
    user = server.state.create_user("eve")
    _, eph = server.state.create_key(user, ephemeral=True)
    node, _, _ = await join(server, eph, "tmp")
    await node.conn.close()
    again = SimNode("tmp")
    again.conn.machine = node.conn.machine
    again.node_key = node.node_key
    await again.conn.connect("127.0.0.1", server.main_port)
    assert (await again.register(None))["MachineAuthorized"] is True
    s = again.open_stream()
    assert await s.next() is not None
    await asyncio.sleep(1.5)
    assert len(server.state.nodes) == 1


async def test_expiry_reaches_peers_and_self(server: Server, key: str) -> None:
    _a, sa, _ = await join(server, key, "a")
    _b, sb, bfirst = await join(server, key, "b")
    assert sa is not None and sb is not None and bfirst is not None and server.lifecycle
    server.lifecycle.expire(bfirst["Node"]["ID"])
    patch = await patch_with(sa, "KeyExpiry", bfirst["Node"]["ID"])
    assert patch["NodeID"] == bfirst["Node"]["ID"]
    own = await next_with(sb, "Node")
    assert own["Node"]["Expired"] is True


async def test_tagged_key_makes_a_tagged_node(server: Server) -> None:
    assert server.state is not None
    _, tagged = server.state.create_key(None, tags=["tag:server"])
    _, _, first = await join(server, tagged, "srv")
    assert first is not None
    me = first["Node"]
    assert me["Tags"] == ["tag:server"] and "KeyExpiry" not in me
    assert me["User"] == 2147455555
    assert first["UserProfiles"][0]["LoginName"] == "tagged-devices"


async def test_same_single_use_key_again_from_the_same_machine(server: Server) -> None:
    """A container re-running `tailscale up --authkey K` keeps working after K is used."""
    assert server.state is not None
    user = server.state.create_user("bob")
    _, once = server.state.create_key(user, expiration=timedelta(hours=1))
    node, _, _ = await join(server, once, "box", stream=False)
    resp = await node.register(once)
    assert resp.get("MachineAuthorized") is True, resp
    assert len(server.state.nodes) == 1


async def test_new_stream_replaces_the_old_one(server: Server, key: str) -> None:
    a, s1, _ = await join(server, key, "a")
    assert s1 is not None
    s2 = a.open_stream()
    assert (await s2.next()) is not None
    # The older stream ends; before that it may still carry this turn's patches (about the node
    # itself, which a client ignores), never another full map.
    while (msg := await s1.next(timeout=5)) is not None:
        assert set(msg) == {"PeersChangedPatch"}, msg
