"""Issue 11, items 5, 6, 7 and 11: node state a client must not be able to bend (self-assigned
tags, route primaries on dead routers, expired nodes still talking, reused IDs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshscale.errors import PolicyError
from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.simclient import SimNode
from meshscale.testing import make_config
from tests.plugin.simnodes import join, quiet
from tests.plugin.test_bad_input import still_serving, unchanged

pytestmark = pytest.mark.asyncio


# -- item 5: no policy, no self-assigned tags ------------------------------------------------


@pytest.mark.parametrize("plugins", [["sqlite"], ["sqlite", "policy"]])
async def test_request_tags_without_a_policy_are_refused(
        meshscale_server_factory: Callable[..., Any], plugins: list[str]) -> None:
    server: Server = await meshscale_server_factory(plugins=plugins)
    assert server.state is not None and server.policy_text is None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    node = SimNode("sneaky")
    node.hostinfo["RequestTags"] = ["tag:prod"]
    await node.conn.connect("127.0.0.1", server.main_port)
    resp = await unchanged(server, lambda: node.register(key))
    assert "no policy is loaded" in resp["Error"] and "tag:prod" in resp["Error"], resp
    assert not server.state.nodes
    # A pre-auth key made with tags (by an admin) still tags the node.
    _, tagged_key = server.state.create_key(None, tags=["tag:prod"])
    _, _, first = await join(server, tagged_key, "tagged")
    assert first is not None and first["Node"]["Tags"] == ["tag:prod"]
    # And without RequestTags the user's key works as before.
    _, _, plain = await join(server, key, "plain")
    assert plain is not None and "Tags" not in plain["Node"]
    await still_serving(server)


# -- item 7: logout and expiry cut a node off ------------------------------------------------




@pytest.mark.parametrize("how", ["logout", "expiry"])
async def test_expired_or_logged_out_node_is_cut_off(
        meshscale_server_factory: Callable[..., Any], how: str) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None and server.lifecycle is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    a, sa, _ = await join(server, key, "a")
    b, sb, bfirst = await join(server, key, "b")
    assert sa is not None and sb is not None and bfirst is not None
    b_id = bfirst["Node"]["ID"]
    assert [p["Name"] for p in bfirst["Peers"]]
    await quiet(sa)
    await quiet(sb)

    if how == "logout":
        resp = await b.register(None, Expiry="1970-01-01T00:02:03Z")
        assert resp["NodeKeyExpired"] is True
    else:
        server.lifecycle.expire(b_id)

    # b's stream: a map saying its key expired, with no peers and no rules.
    got = await quiet(sb)
    full = [m for m in got if "DERPMap" in m]
    assert len(full) == 1, got
    assert full[0]["Node"]["Expired"] is True and full[0]["Node"]["KeyExpiry"] < "2100"
    assert "Peers" not in full[0] and full[0]["PacketFilter"] == []
    # Its reports are refused and never reach a.
    await quiet(sa)
    status, body = await b.conn.request("/machine/map", b.map_body(
        False, Endpoints=["1.2.3.4:41641"],
        Hostinfo={**b.hostinfo, "RoutableIPs": ["10.0.0.0/8"]}))
    assert (status, body) == (403, b"node key expired: log in again\n")
    assert await quiet(sa) == []
    node = server.state.nodes[b_id]
    assert node.endpoints != ("1.2.3.4:41641",) and not node.routable_ips
    # a's changes do not reach b any more.
    status, _ = await a.conn.request("/machine/map", a.map_body(
        False, Endpoints=["5.6.7.8:41641"]))
    assert status == 200
    assert await quiet(sb) == []
    # A new stream gets the same cut-off map, and b does not come online for its peers.
    await b.conn.close()
    b2 = SimNode("b")
    b2.conn.machine, b2.node_key = b.conn.machine, b.node_key
    await b2.conn.connect("127.0.0.1", server.main_port)
    again = b2.open_stream()
    first = await again.next()
    assert first is not None and first["Node"]["Expired"] is True and "Peers" not in first
    assert not server.state.nodes[b_id].online
    # Logging in again with a key restores it.
    resp = await b2.register(key)
    assert resp["MachineAuthorized"] is True
    back = b2.open_stream()
    restored = await back.next()
    assert restored is not None and "Expired" not in restored["Node"] and restored["Peers"]
    await still_serving(server)


# -- item 6: subnet-route primaries only on online, unexpired routers ------------------------


ROUTE = "10.7.0.0/24"


async def primary_seen(stream: Any, want: int | None, ids: set[int]) -> None:
    """Read deltas until the viewer holds ``want`` as the only router offering ROUTE."""
    holders: dict[int, bool] = {}
    for _ in range(50):
        msg = await stream.next(timeout=5)
        assert msg is not None
        for p in msg.get("PeersChanged", []):
            if p["ID"] in ids:
                holders[p["ID"]] = ROUTE in p.get("PrimaryRoutes", [])
        offering = {i for i, yes in holders.items() if yes}
        if (want is None and not offering and holders) or offering == {want}:
            return
    raise AssertionError(f"viewer never saw {want} as the only primary: {holders}")


async def test_primary_is_elected_among_online_unexpired_routers(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None and server.lifecycle is not None
    state = server.state
    user = state.create_user("alice")
    _, key = state.create_key(user, reusable=True)
    # The oldest router (lowest ID) is registered but never connects: it must not win.
    old, _, _ = await join(server, key, "old", stream=False, RoutableIPs=[ROUTE])
    r1, s1, f1 = await join(server, key, "r1", RoutableIPs=[ROUTE])
    r2, s2, f2 = await join(server, key, "r2", RoutableIPs=[ROUTE])
    _, viewer, _ = await join(server, key, "viewer")
    assert viewer is not None and f1 is not None and f2 is not None
    old_id = next(n.id for n in state.nodes.values() if n.hostname == "old")
    id1, id2 = f1["Node"]["ID"], f2["Node"]["ID"]
    for i in (old_id, id1, id2):
        state.set_approved_routes(i, [ROUTE])
    assert state.routes.primaries == {id1: [ROUTE]}, "the offline oldest router took over"
    await primary_seen(viewer, id1, {old_id, id1, id2})

    # r1 disconnects: r2 takes over, and the viewer learns it by delta.
    await r1.conn.close()
    await primary_seen(viewer, id2, {old_id, id1, id2})
    assert state.routes.primaries == {id2: [ROUTE]}

    # r1 comes back: r2 keeps the route while it works (no flapping back).
    back = SimNode("r1")
    back.conn.machine, back.node_key = r1.conn.machine, r1.node_key
    await back.conn.connect("127.0.0.1", server.main_port)
    s1b = back.open_stream()
    assert await s1b.next() is not None
    assert state.routes.primaries == {id2: [ROUTE]}

    # r2's key expires: r1 takes over again; an expired router is never elected.
    server.lifecycle.expire(id2)
    await primary_seen(viewer, id1, {old_id, id1, id2})
    assert state.routes.primaries == {id1: [ROUTE]}

    # Nobody online: nobody offers the route.
    await back.conn.close()
    await primary_seen(viewer, None, {old_id, id1, id2})
    assert state.routes.primaries == {}
    del old, r2, s1, s2


# -- item 11: node and user IDs are never reused ---------------------------------------------


async def test_ids_of_deleted_nodes_and_users_are_never_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"

    def make() -> Server:
        host = PluginHost()
        host.load(["sqlite"])
        return Server(make_config(data, host, plugins=["sqlite"]), host)

    first = make()
    await first.start()
    try:
        assert first.state is not None and first.lifecycle is not None
        alice = first.state.create_user("alice")
        _, key = first.state.create_key(alice, reusable=True)
        ids = []
        for name in ("a", "b", "c"):
            _, _, _ = await join(first, key, name, stream=False)
            ids.append(max(first.state.nodes))
        first.lifecycle.delete(ids[-1])  # the newest node goes...
        _, _, again = await join(first, key, "d")
        assert again is not None
        assert again["Node"]["ID"] == ids[-1] + 1  # ...and its ID is not handed out again
        assert again["Node"]["StableID"] != str(ids[-1])
        bob = first.state.create_user("bob")
        first.state.delete_user(bob.id)
        carol = first.state.create_user("carol")
        assert carol.id == bob.id + 1
        newest_node = again["Node"]["ID"]
        first.lifecycle.delete(newest_node)
        first.state.delete_user(carol.id)
    finally:
        await first.stop()

    # After a restart too: the high-water mark is in the database.
    second = make()
    await second.start()
    try:
        assert second.state is not None
        dave = second.state.create_user("dave")
        assert dave.id == carol.id + 1
        _, key2 = second.state.create_key(dave)
        _, _, fresh = await join(second, key2, "e")
        assert fresh is not None and fresh["Node"]["ID"] == newest_node + 1
    finally:
        await second.stop()


# -- item 9: policy tests are checked when a policy is set; at start-up they only warn -------

TESTED_POLICY = json.dumps({
    "tagOwners": {"tag:web": ["alice@"]},
    "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:80"]}],
    "tests": [{"src": "alice@", "accept": ["tag:web:80"]}],
})


async def test_failing_policy_tests_warn_at_start_but_refuse_a_new_policy(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"

    def make() -> Server:
        host = PluginHost()
        host.load(["sqlite", "policy"])
        return Server(make_config(data, host, plugins=["sqlite", "policy"],
                                  policy={"mode": "database"}), host)

    first = make()
    await first.start()
    try:
        assert first.state is not None and first.lifecycle is not None
        alice = first.state.create_user("alice")
        _, key = first.state.create_key(alice, reusable=True)
        _, _, _ = await join(first, key, "laptop", stream=False)
        with pytest.raises(PolicyError, match="no addresses"):  # nothing is tag:web yet
            first.set_policy(TESTED_POLICY, "test", persist=True)
        _, web_key = first.state.create_key(None, tags=["tag:web"])
        await join(first, web_key, "web", stream=False)
        first.set_policy(TESTED_POLICY, "test", persist=True)  # the tests pass now
        first.lifecycle.delete(max(first.state.nodes))  # the last tag:web node goes
    finally:
        await first.stop()

    second = make()
    await second.start()  # starts (it used to refuse), in force, with a warning
    try:
        assert second.policy_text == TESTED_POLICY
        assert "its tests fail against the nodes now registered" in caplog.text
        assert "no addresses" in caplog.text
        with pytest.raises(PolicyError, match="no addresses"):  # setting it again checks
            second.set_policy(TESTED_POLICY, "test", persist=True)
        await still_serving(second)
    finally:
        await second.stop()
