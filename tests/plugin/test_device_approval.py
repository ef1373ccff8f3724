"""Device approval (``node.approval: manual``) with protocol-level simulated nodes.

A new node, however it authenticated, waits: its RegisterResponse and its own map say
MachineAuthorized false, its map has no peers and no rules, no peer's map holds it and nothing
it reports reaches anyone. ``nodes approve`` (admin API, REST) lets it in: its peers get it at
once and it gets a full map with them. ``nodes unapprove`` takes an approved node back out:
its peers drop it at once and its next map is a waiting node's. The state survives a restart.
The real client's side (NeedsMachineAuth, traffic) is tests/interop/test_device_approval.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.cli.client import AdminClient
from meshscale.errors import MeshscaleError
from meshscale.server import Server
from meshscale.simclient import MapStream, SimNode
from tests.plugin.simnodes import next_with, quiet

pytestmark = pytest.mark.asyncio


async def register(server: Server, key: str, hostname: str) -> tuple[SimNode, dict[str, Any]]:
    node = SimNode(hostname)
    await node.conn.connect("127.0.0.1", server.main_port)
    return node, await node.register(key)


async def first_map(node: SimNode) -> tuple[MapStream, dict[str, Any]]:
    stream = node.open_stream()
    first = await stream.next()
    assert first is not None and "Node" in first, first
    return stream, first


def node_id(server: Server, node: SimNode) -> int:
    assert server.state is not None
    found = server.state.by_node_key(bytes.fromhex(node.node_key_text[8:]))
    assert found is not None
    return found.id


async def admin(server: Server, method: str, path: str, body: Any = None) -> Any:
    client = AdminClient(str(server.admin_socket_path))
    return await asyncio.to_thread(client.call, method, path, body)


@pytest.fixture
async def manual(meshscale_server_factory: Callable[..., Any]) -> Server:
    srv: Server = await meshscale_server_factory(node={"approval": "manual"})
    return srv


def alice_key(server: Server) -> str:
    assert server.state is not None
    user = server.state.create_user("alice", email="alice@example.com")
    return server.state.create_key(user, reusable=True)[1]


async def test_a_waiting_node_sees_nobody_and_nobody_sees_it(
        manual: Server, caplog: pytest.LogCaptureFixture) -> None:
    key = alice_key(manual)
    caplog.set_level(logging.INFO, "meshscale.audit")
    a, resp = await register(manual, key, "laptop")
    assert resp["MachineAuthorized"] is False and "Error" not in resp, resp
    assert "registered, waits for approval (meshscale nodes approve)" in caplog.text
    sa, first = await first_map(a)
    assert first["Node"]["MachineAuthorized"] is False
    assert "Peers" not in first and first["PacketFilter"] == []

    # The admin lets it in: its stream gets a full map of the new kind.
    a_id = node_id(manual, a)
    listed = await admin(manual, "GET", f"/v1/nodes/{a_id}")
    assert listed["approved"] is False
    approved = await admin(manual, "POST", f"/v1/nodes/{a_id}/approve")
    assert approved["approved"] is True
    assert "approved by an admin" in caplog.text
    again = await sa.next()
    assert again is not None and again["Node"]["MachineAuthorized"] is True
    assert again["PacketFilter"] != []
    with pytest.raises(MeshscaleError, match=f"node {a_id} .* is already approved"):
        await admin(manual, "POST", f"/v1/nodes/{a_id}/approve")

    # A second node waits: the first one's map never hears of it, whatever it reports.
    b, resp = await register(manual, key, "phone")
    assert resp["MachineAuthorized"] is False
    sb, bfirst = await first_map(b)
    assert "Peers" not in bfirst and bfirst["Node"]["MachineAuthorized"] is False
    assert await b.lite_update(["192.0.2.7:41641"]) == 200
    assert await quiet(sa) == []

    # Approved: each gets the other at once.
    b_id = node_id(manual, b)
    await admin(manual, "POST", f"/v1/nodes/{b_id}/approve")
    delta = await next_with(sa, "PeersChanged")
    assert [p["ID"] for p in delta["PeersChanged"]] == [b_id]
    assert delta["PeersChanged"][0]["Endpoints"] == ["192.0.2.7:41641"]
    full = await sb.next()
    assert full is not None and [p["ID"] for p in full["Peers"]] == [a_id]
    assert full["Node"]["MachineAuthorized"] is True
    for n in (a, b):
        await n.conn.close()


POLICIES = {
    "allow-all": None,
    # Restrictive: each stream holds its peers as a bitset and the policy engine's view of who
    # sees whom changes with the node (another path through the mapper than allow-all's).
    "restrictive": json.dumps({"acls": [
        {"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
async def test_unapproving_cuts_a_node_off_at_once(
        meshscale_server_factory: Callable[..., Any], policy: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tailscale's ``authorized: false``: an approved node goes back to waiting. Its peers get
    PeersRemoved at once; its stream ends and its next map says MachineAuthorized false, with
    no peers and no rules; nothing it reports reaches anyone; approving it again restores it.
    Under node.approval: auto too (the node then waits until an admin approves it)."""
    srv: Server = await meshscale_server_factory(plugins=["sqlite", "policy"],
                                                 policy={"mode": "database"})
    if POLICIES[policy] is not None:
        srv.set_policy(POLICIES[policy], "test", persist=True)
    key = alice_key(srv)
    (a, _), (b, _) = [await register(srv, key, name) for name in ("laptop", "phone")]
    a_id, b_id = node_id(srv, a), node_id(srv, b)
    (sa, fa), (sb, _) = await first_map(a), await first_map(b)
    assert [p["ID"] for p in fa.get("Peers", [])] in ([b_id], [])  # b may come as a delta
    await quiet(sa)
    await quiet(sb)
    caplog.set_level(logging.INFO, "meshscale.audit")

    gone = await admin(srv, "POST", f"/v1/nodes/{b_id}/unapprove")
    assert gone["approved"] is False and gone["id"] == b_id
    assert f"node {b_id} phone (user alice" in caplog.text
    assert "unapproved by an admin, waits for approval" in caplog.text
    delta = await next_with(sa, "PeersRemoved")
    assert delta["PeersRemoved"] == [b_id]
    assert srv.state is not None and srv.state.pending == {b_id}
    assert srv.storage is not None  # stored: a restarted server keeps it waiting
    assert {n.id: n.approved for n in srv.storage.load().nodes} == {a_id: True, b_id: False}
    while await sb.next() is not None:  # the server ends its stream; the client polls again
        pass
    sb, again = await first_map(b)
    assert again["Node"]["MachineAuthorized"] is False
    assert "Peers" not in again and again["PacketFilter"] == []
    assert await b.lite_update(["192.0.2.9:41641"]) == 200
    assert await quiet(sa) == []  # nothing it reports reaches anyone
    with pytest.raises(MeshscaleError, match=f"node {b_id} .* already waits for approval"):
        await admin(srv, "POST", f"/v1/nodes/{b_id}/unapprove")

    # Approved again: each gets the other at once, as a first approval does.
    await admin(srv, "POST", f"/v1/nodes/{b_id}/approve")
    delta = await next_with(sa, "PeersChanged")
    assert [p["ID"] for p in delta["PeersChanged"]] == [b_id]
    assert delta["PeersChanged"][0]["Endpoints"] == ["192.0.2.9:41641"]
    full = await sb.next()
    assert full is not None and [p["ID"] for p in full["Peers"]] == [a_id]
    assert full["Node"]["MachineAuthorized"] is True and full["PacketFilter"] != []
    for n in (a, b):
        await n.conn.close()


async def test_an_unapproved_subnet_router_hands_its_routes_over(manual: Server) -> None:
    """The route table forgets an unapproved router as a deleted one: the other router of the
    prefix becomes primary and peers route through it."""
    key = alice_key(manual)
    assert manual.state is not None and manual.lifecycle is not None
    ids, nodes, streams = [], [], []
    for name in ("r1", "r2", "client"):
        node = SimNode(name)
        if name != "client":
            node.hostinfo["RoutableIPs"] = ["10.9.0.0/24"]
        await node.conn.connect("127.0.0.1", manual.main_port)
        await node.register(key)
        ids.append(node_id(manual, node))
        manual.lifecycle.approve(ids[-1])
        if name != "client":
            manual.lifecycle.approve_routes(ids[-1], ["10.9.0.0/24"])
        streams.append((await first_map(node))[0])  # online: a router serves only then
        nodes.append(node)
    r1, r2, _ = ids
    assert manual.state.routes.primary == {"10.9.0.0/24": r1}
    manual.lifecycle.unapprove(r1)
    assert manual.state.routes.primary == {"10.9.0.0/24": r2}
    manual.lifecycle.approve(r1)  # back in: r2 stays primary (primaries are sticky)
    assert manual.state.routes.primary == {"10.9.0.0/24": r2}
    for n in nodes:
        await n.conn.close()


async def test_a_pre_approved_key_lets_its_nodes_in_at_once(
        manual: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A key made with preauthorized (Tailscale's name; ``--pre-approved``) registers nodes
    approved; a node that waits is let in when it logs in again with such a key; an ordinary
    key's node still waits."""
    alice_key(manual)
    made = await admin(manual, "POST", "/v1/preauthkeys",
                       {"user": "alice", "reusable": True, "preauthorized": True})
    assert made["preauthorized"] is True
    listed = await admin(manual, "GET", "/v1/preauthkeys")
    assert [k["preauthorized"] for k in listed] == [False, True]
    with pytest.raises(MeshscaleError, match="preauthorized must be true or false"):
        await admin(manual, "POST", "/v1/preauthkeys", {"user": "alice", "preauthorized": "yes"})
    caplog.set_level(logging.INFO, "meshscale.audit")

    a, resp = await register(manual, made["key"], "laptop")
    assert resp["MachineAuthorized"] is True, resp
    assert "registered (pre-approved key)" in caplog.text and "waits for" not in caplog.text
    sa, first = await first_map(a)
    assert first["Node"]["MachineAuthorized"] is True and first["PacketFilter"] != []
    await quiet(sa)  # its own coming online

    assert manual.state is not None
    ordinary = manual.state.create_key(manual.state.user("alice"))[1]
    b, resp = await register(manual, ordinary, "phone")
    assert resp["MachineAuthorized"] is False
    assert await quiet(sa) == []  # a waiting node: a's map does not hear of it
    b_id = node_id(manual, b)
    # The same machine logs in again with the pre-approved key (a new node key, as
    # `tailscale up --force-reauth --authkey` does).
    b.node_key = X25519PrivateKey.generate()
    resp = await b.register(made["key"])
    assert resp["MachineAuthorized"] is True, resp
    assert "approved by its pre-approved pre-auth key" in caplog.text
    assert manual.state.nodes[b_id].approved and manual.state.pending == set()
    delta = await next_with(sa, "PeersChanged")
    assert [p["ID"] for p in delta["PeersChanged"]] == [b_id]
    for n in (a, b):
        await n.conn.close()


async def test_waiting_survives_a_restart_and_logging_in_again(
        meshscale_server_factory: Callable[..., Any], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Pending is stored: after a restart the node still waits, even when approval is back to
    auto (which the server warns about); logging in again (a new key) does not approve it."""
    db = {"sqlite": {"path": str(tmp_path / "db.sqlite")}}
    srv: Server = await meshscale_server_factory(node={"approval": "manual"}, database=db)
    key = alice_key(srv)
    a, _ = await register(srv, key, "laptop")
    await a.conn.close()
    await srv.stop()

    srv = await meshscale_server_factory(database=db)
    assert "1 node(s) wait for approval although node.approval is auto" in caplog.text
    assert srv.state is not None
    (node,) = srv.state.nodes.values()
    assert node.approved is False and srv.state.pending == {node.id}
    a.conn = type(a.conn)(machine=a.conn.machine)
    await a.conn.connect("127.0.0.1", srv.main_port)
    resp = await a.register(srv.state.create_key(srv.state.user("alice"))[1])
    assert resp["MachineAuthorized"] is False
    await a.conn.close()


async def test_the_rest_api_approves(manual: Server) -> None:
    """POST /api/v1/node/{id}/approve (meshscale's addition to headscale's API)."""
    assert manual.apikeys is not None
    _, api_key = manual.apikeys.create()
    a, _ = await register(manual, alice_key(manual), "laptop")
    a_id = node_id(manual, a)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{manual.main_port}",
                                 headers={"Authorization": f"Bearer {api_key}"}) as api:
        got = await api.post(f"/api/v1/node/{a_id}/approve")
        assert got.status_code == 200, got.text
        assert got.json()["node"]["id"] == str(a_id)
        again = await api.post(f"/api/v1/node/{a_id}/approve")
        assert again.status_code == 400 and "already approved" in again.text, again.text
        # UnapproveNode, the reverse (Tailscale's authorized: false)
        got = await api.post(f"/api/v1/node/{a_id}/unapprove")
        assert got.status_code == 200, got.text
        assert got.json()["node"]["id"] == str(a_id)
        assert manual.state is not None and manual.state.pending == {a_id}
        again = await api.post(f"/api/v1/node/{a_id}/unapprove")
        assert again.status_code == 400 and "already waits" in again.text, again.text
        missing = await api.post("/api/v1/node/999/unapprove")
        assert missing.status_code == 404, missing.text
        assert (await api.post(f"/api/v1/node/{a_id}/approve")).status_code == 200
        # CreatePreAuthKey takes Tailscale's preauthorized (a meshscale addition)
        made = await api.post("/api/v1/preauthkey", json={"user": "1", "preauthorized": True})
        assert made.status_code == 200, made.text
        bad = await api.post("/api/v1/preauthkey", json={"user": "1", "preauthorized": "yes"})
        assert bad.status_code == 400 and "preauthorized" in bad.text
    b, resp = await register(manual, made.json()["preAuthKey"]["key"], "phone")
    assert resp["MachineAuthorized"] is True
    await b.conn.close()
    assert manual.state is not None and manual.state.nodes[a_id].approved
    await a.conn.close()


async def test_auto_approval_is_the_default(
        meshscale_server_factory: Callable[..., Any]) -> None:
    srv: Server = await meshscale_server_factory()
    assert srv.config.node.approval == "auto"
    a, resp = await register(srv, alice_key(srv), "laptop")
    assert resp["MachineAuthorized"] is True
    await a.conn.close()


async def test_an_unknown_approval_mode_is_refused(
        meshscale_server_factory: Callable[..., Any]) -> None:
    with pytest.raises(Exception, match=r"node\.approval: must be auto or manual"):
        await meshscale_server_factory(node={"approval": "sometimes"})
