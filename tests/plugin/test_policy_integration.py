"""Policy and routes in a live server, with simulated nodes: deltas on policy change, routes
(advertise, auto-approve, primary election, failover), tagOwners at registration, file reload;
and the mapper's per-viewer peers against policytool over the conformance corpus."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.cli.main import main
from meshscale.configload import build_config
from meshscale.errors import MeshscaleError, PolicyError
from meshscale.mapper.mapper import Mapper
from meshscale.mapper.session import MapSession
from meshscale.pluginhost import PluginHost
from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policytool import compile_topology
from meshscale.server import Server
from meshscale.simclient import MapStream, SimNode
from meshscale.state.models import Node, User
from meshscale.state.store import PolicyHooks, State
from meshscale.storage.base import PutPolicy, Snapshot
from meshscale.testing import make_config
from tests.conformance.corpus import CONTROL_URL, case_files, load, topology_with_ids
from tests.conftest import Backend
from tests.plugin.simnodes import join, next_with

ALICE_ONLY = json.dumps({
    "acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}],
})
ALICE_AND_MALLORY = json.dumps({
    "acls": [{"action": "accept", "src": ["alice@", "mallory@"], "dst": ["alice@:*"]}],
    "nodeAttrs": [{"target": ["mallory@"], "attr": ["magicdns-aaaa"]}],
    "ssh": [{"action": "accept", "src": ["alice@"], "dst": ["autogroup:self"],
             "users": ["autogroup:nonroot"]}],
})
ROUTES_POLICY = json.dumps({
    "tagOwners": {"tag:router": ["alice@"]},
    "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}},
    "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:router:*", "10.0.0.0/8:*"]}],
})


# -- helpers -------------------------------------------------------------------------------




async def drain(stream: MapStream, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Everything the stream has pending, until it stays quiet for ``quiet`` seconds."""
    out = []
    while True:
        try:
            msg = await stream.next(quiet)
        except TimeoutError:
            return out
        assert msg is not None, "stream ended"
        out.append(msg)


def peer_ids(first: dict[str, Any]) -> set[int]:
    return {p["ID"] for p in first.get("Peers") or []}


def full_maps(server: Server, node_id: int) -> int:
    assert server.mapper is not None
    return server.mapper.sessions[node_id].sent["full"]


def users_and_keys(server: Server, *names: str) -> dict[str, str]:
    assert server.state is not None
    keys = {}
    for name in names:
        user = server.state.create_user(name)
        keys[name] = server.state.create_key(user, reusable=True)[1]
    return keys


@pytest.fixture
async def dbserver(meshscale_server_factory: Callable[..., Any], backend: Backend) -> Server:
    srv: Server = await meshscale_server_factory(plugins=[backend.name, "policy"],
                                                 database=backend.database,
                                                 policy={"mode": "database"})
    return srv


# -- live policy changes -------------------------------------------------------------------


async def test_policy_change_sends_filter_and_peer_deltas(dbserver: Server) -> None:
    keys = users_and_keys(dbserver, "alice", "mallory")
    dbserver.set_policy(ALICE_ONLY, "database", persist=True)
    _, sa, a1 = await join(dbserver, keys["alice"], "a1")
    _, _, a2 = await join(dbserver, keys["alice"], "a2")
    _, sm, m1 = await join(dbserver, keys["mallory"], "m1")
    ida, ida2, idm = a1["Node"]["ID"], a2["Node"]["ID"], m1["Node"]["ID"]
    assert peer_ids(a2) == {ida} and "Peers" not in m1
    assert m1["PacketFilter"] == []  # nobody may reach mallory's node
    assert (await next_with(sa, "PeersChanged"))["PeersChanged"][0]["ID"] == ida2

    # Open: mallory may reach alice. Alice's nodes get mallory as a peer and a new filter;
    # mallory gets alice's nodes, a new self CapMap (nodeAttrs); SSH only for alice.
    dbserver.set_policy(ALICE_AND_MALLORY, "database", persist=True)
    delta = await next_with(sa, "PacketFilter")
    srcs = {ip for rule in delta["PacketFilter"] for ip in rule["SrcIPs"]}
    assert srcs == {"100.64.0.1-100.64.0.3", "fd7a:115c:a1e0::1-fd7a:115c:a1e0::3"}
    assert [p["ID"] for p in delta["PeersChanged"]] == [idm]
    assert delta["SSHPolicy"]["rules"]
    mdelta = await next_with(sm, "PeersChanged")
    assert {p["ID"] for p in mdelta["PeersChanged"]} == {ida, ida2}
    assert "magicdns-aaaa" in mdelta["Node"]["CapMap"]
    assert {p["LoginName"] for p in mdelta["UserProfiles"]} == {"alice"}

    # Close again: mallory disappears from alice's map and alice's nodes from mallory's.
    dbserver.set_policy(ALICE_ONLY, "database", persist=True)
    assert (await next_with(sa, "PeersRemoved"))["PeersRemoved"] == [idm]
    mdelta = await next_with(sm, "PeersRemoved")
    assert sorted(mdelta["PeersRemoved"]) == sorted([ida, ida2])
    assert "magicdns-aaaa" not in mdelta["Node"]["CapMap"]

    # A broken policy changes nothing and says where it is wrong.
    await drain(sa)
    with pytest.raises(PolicyError, match=r"acls\[0\]"):
        dbserver.set_policy('{"acls": [{"action": "nope", "src": ["*"], "dst": ["*:*"]}]}',
                            "database", persist=True)
    assert dbserver.policy_text == ALICE_ONLY
    assert await drain(sa) == []  # nothing was sent
    assert full_maps(dbserver, ida) == 1 and full_maps(dbserver, idm) == 1


async def test_admin_api_set_and_check_policy(dbserver: Server) -> None:
    from meshscale.api.admin import create_admin_app

    users_and_keys(dbserver, "alice")
    client = create_admin_app(dbserver).test_client()
    bad = await client.put("/v1/policy", json={"policy": '{"acls": [{"src": 1}]}'})
    assert bad.status_code == 400 and "acls[0]" in (await bad.get_json())["error"]
    assert dbserver.policy_text is None
    check = await client.post("/v1/policy/check", json={
        "policy": '{"tests": [{"src": "alice@", "accept": ["100.64.0.9:22"]}], '
                  '"acls": [{"action": "accept", "src": ["bob@"], "dst": ["*:*"]}]}'})
    assert check.status_code == 400 and "tests[0]" in (await check.get_json())["error"]
    ok = await client.put("/v1/policy", json={"policy": ALICE_ONLY})
    assert ok.status_code == 200 and dbserver.policy_text == ALICE_ONLY


# -- routes --------------------------------------------------------------------------------


async def test_routes_auto_approve_primary_and_failover(dbserver: Server) -> None:
    assert dbserver.state is not None and dbserver.lifecycle is not None
    keys = users_and_keys(dbserver, "alice")
    dbserver.set_policy(ROUTES_POLICY, "database", persist=True)
    _, sv, viewer = await join(dbserver, keys["alice"], "laptop")
    _, router_key = dbserver.state.create_key(dbserver.state.user("alice"), reusable=True,
                                              tags=["tag:router"])
    r1, s1, first1 = await join(dbserver, router_key, "r1", RoutableIPs=["10.1.0.0/16"])
    r2, _, first2 = await join(dbserver, router_key, "r2", RoutableIPs=["10.1.0.0/16"])
    id1, id2 = first1["Node"]["ID"], first2["Node"]["ID"]
    # autoApprovers approved the route; the lower id is primary, the other stands by.
    assert first1["Node"]["PrimaryRoutes"] == ["10.1.0.0/16"]
    assert "PrimaryRoutes" not in first2["Node"]
    assert dbserver.state.routes.primaries == {id1: ["10.1.0.0/16"]}
    seen: dict[int, dict[str, Any]] = {}
    while id2 not in seen or id1 not in seen:
        for p in (await next_with(sv, "PeersChanged"))["PeersChanged"]:
            seen[p["ID"]] = p
    assert seen[id1]["PrimaryRoutes"] == ["10.1.0.0/16"]
    assert "10.1.0.0/16" in seen[id1]["AllowedIPs"]
    assert "10.1.0.0/16" not in seen[id2]["AllowedIPs"]

    # Failover: deleting the primary makes the standby primary; peers learn it by delta.
    await drain(sv)
    dbserver.lifecycle.delete(id1)
    assert dbserver.state.routes.primaries == {id2: ["10.1.0.0/16"]}
    msg = await next_with(sv, "PeersChanged")
    (peer,) = msg["PeersChanged"]
    assert peer["ID"] == id2 and peer["PrimaryRoutes"] == ["10.1.0.0/16"]
    assert "10.1.0.0/16" in peer["AllowedIPs"]
    assert full_maps(dbserver, viewer["Node"]["ID"]) == 1
    del r1, r2, s1


async def test_advertise_then_admin_approve(dbserver: Server) -> None:
    assert dbserver.state is not None
    keys = users_and_keys(dbserver, "alice")
    _, sv, _ = await join(dbserver, keys["alice"], "laptop")
    router, sr, first = await join(dbserver, keys["alice"], "gw")
    rid = first["Node"]["ID"]
    # The client starts advertising (a lite update with new Hostinfo): nothing is approved.
    router.hostinfo["RoutableIPs"] = ["192.168.7.0/24", "0.0.0.0/0", "::/0"]
    assert await router.lite_update(["127.0.0.1:1"]) == 200
    msg = await next_with(sv, "PeersChanged")
    assert msg["PeersChanged"][-1]["AllowedIPs"] == first["Node"]["Addresses"]
    assert dbserver.state.routes.primaries == {}
    # An endpoint change afterwards touches neither policy nor routes: a patch, no node.
    await drain(sv)
    assert await router.lite_update(["127.0.0.1:2"]) == 200
    (msg,) = await drain(sv)
    assert msg == {"PeersChangedPatch": [{"NodeID": rid, "Endpoints": ["127.0.0.1:2"]}]}

    await drain(sr)
    dbserver.state.set_approved_routes(rid, ["192.168.7.0/24", "0.0.0.0/0", "::/0"])
    peer = (await next_with(sv, "PeersChanged"))["PeersChanged"][0]
    assert peer["PrimaryRoutes"] == ["192.168.7.0/24"]
    assert set(peer["AllowedIPs"]) >= {"192.168.7.0/24", "0.0.0.0/0", "::/0"}
    me = (await next_with(sr, "Node"))["Node"]
    assert me["PrimaryRoutes"] == ["192.168.7.0/24"]
    with pytest.raises(Exception, match="invalid route"):
        dbserver.state.set_approved_routes(rid, ["192.168.7.1/24"])


async def test_policy_change_withdraws_auto_approved_route(dbserver: Server) -> None:
    assert dbserver.state is not None
    keys = users_and_keys(dbserver, "alice")
    dbserver.set_policy(ROUTES_POLICY, "database", persist=True)
    _, sv, _ = await join(dbserver, keys["alice"], "laptop")
    _, router_key = dbserver.state.create_key(dbserver.state.user("alice"), tags=["tag:router"])
    _, _, first = await join(dbserver, router_key, "r1", RoutableIPs=["10.1.0.0/16"])
    await drain(sv)
    no_auto = json.loads(ROUTES_POLICY)
    del no_auto["autoApprovers"]
    dbserver.set_policy(json.dumps(no_auto), "database", persist=True)
    msg = await next_with(sv, "PeersChanged")
    peer = msg["PeersChanged"][-1]
    assert peer["ID"] == first["Node"]["ID"] and "PrimaryRoutes" not in peer
    assert "10.1.0.0/16" not in peer["AllowedIPs"]
    assert dbserver.state.routes.primaries == {}


# -- tags ----------------------------------------------------------------------------------


async def test_tags_permitted_at_registration(dbserver: Server) -> None:
    assert dbserver.state is not None
    keys = users_and_keys(dbserver, "alice", "mallory")
    dbserver.set_policy(ROUTES_POLICY, "database", persist=True)
    node = SimNode("sneaky")
    node.hostinfo["RequestTags"] = ["tag:router"]
    await node.conn.connect("127.0.0.1", dbserver.main_port)
    resp = await node.register(keys["mallory"])
    assert "not permitted" in resp["Error"] and "mallory" in resp["Error"]
    ok = SimNode("gw")
    ok.hostinfo["RequestTags"] = ["tag:router"]
    await ok.conn.connect("127.0.0.1", dbserver.main_port)
    assert (await ok.register(keys["alice"]))["MachineAuthorized"] is True
    # A tagged key whose tag the policy in force no longer declares is refused too.
    _, stale = dbserver.state.create_key(None, tags=["tag:gone"])
    late = SimNode("late")
    await late.conn.connect("127.0.0.1", dbserver.main_port)
    assert "tagOwners" in (await late.register(stale))["Error"]


async def test_retagging_updates_filters_and_peers(dbserver: Server) -> None:
    assert dbserver.state is not None
    keys = users_and_keys(dbserver, "alice")
    policy = json.dumps({
        "tagOwners": {"tag:server": ["alice@"]},
        "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:server:*"]}],
    })
    dbserver.set_policy(policy, "database", persist=True)
    _, sa, a = await join(dbserver, keys["alice"], "laptop")
    b, sb, bfirst = await join(dbserver, keys["alice"], "box")
    assert "Peers" not in bfirst and bfirst["PacketFilter"] == []
    # Re-authenticate the same machine with a tagged key (a new node key, as
    # `tailscale up --force-reauth` does): it becomes tag:server.
    _, tagged = dbserver.state.create_key(dbserver.state.user("alice"), tags=["tag:server"])
    old_key = b.node_key_text
    b.node_key = X25519PrivateKey.generate()
    await drain(sa)
    assert (await b.register(tagged, OldNodeKey=old_key))["MachineAuthorized"] is True
    new_filter = await next_with(sb, "PacketFilter")
    assert new_filter["PacketFilter"] and "Tags" in new_filter.get("Node", {"Tags": 1})
    peer = (await next_with(sa, "PeersChanged"))["PeersChanged"][0]
    assert peer["Tags"] == ["tag:server"] and peer["ID"] == bfirst["Node"]["ID"]
    assert full_maps(dbserver, a["Node"]["ID"]) == 1


# -- policy file reload ----------------------------------------------------------------------


async def test_file_reload_keeps_old_policy_on_error(
    meshscale_server_factory: Callable[..., Any], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "policy.hujson"
    path.write_text(ALICE_ONLY)
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "policy"], policy={"mode": "file", "path": str(path)})
    keys = users_and_keys(server, "alice", "mallory")
    _, sa, _ = await join(server, keys["alice"], "a1")
    _, _, m1 = await join(server, keys["mallory"], "m1")
    path.write_text("{\n  // broken\n  \"acls\": [,\n}")
    with caplog.at_level(logging.ERROR):
        server.reload_policy_file()
    assert "keeping the old policy" in caplog.text and "line 4, column 1" in caplog.text
    assert server.policy_text == ALICE_ONLY
    assert await drain(sa) == []
    path.write_text(ALICE_AND_MALLORY)
    server.reload_policy_file()  # what SIGHUP runs
    delta = await next_with(sa, "PeersChanged")
    assert [p["ID"] for p in delta["PeersChanged"]] == [m1["Node"]["ID"]]


# -- the mapper's view equals policytool's -------------------------------------------------


class _NoStorage:
    def load(self) -> Snapshot:
        return Snapshot()

    def apply(self, ops: Any) -> None:
        del ops

    def close(self) -> None:
        return None


def _live_views(text: str, topology: dict[str, Any], tmp: Path) -> dict[str, dict[str, Any]]:
    """Every node's full map from a State + Mapper wired as the server wires them."""
    host = PluginHost()
    config = build_config({"data_dir": str(tmp)}, host.hooks.config_sections())
    users = [User(id=int(u["id"]), name=u["name"], email=u.get("email", ""))
             for u in topology.get("users", [])]
    by_name = {u.name: u.id for u in users}
    nodes = []
    for name, spec in topology["nodes"].items():
        tags = tuple(spec.get("tags") or ())
        hostinfo: dict[str, Any] = {"Hostname": name}
        if spec.get("routable_ips"):
            hostinfo["RoutableIPs"] = spec["routable_ips"]
        nodes.append(Node(
            id=spec["id"], machine_key=bytes([spec["id"]]) * 32,
            node_key=bytes([spec["id"], 1]) * 16, hostname=name, given_name=name,
            user_id=None if tags else by_name.get(spec.get("user", "")),
            ipv4=spec.get("ipv4"), ipv6=spec.get("ipv6"), tags=tags, hostinfo=hostinfo,
            approved_routes=tuple(spec.get("approved_routes") or ()),
            online=True,  # the policy tool's view: every router is up (primaries by lowest ID)
        ))
    storage: Any = _NoStorage()
    state = State(config, storage)
    state.load(Snapshot(users=users, nodes=nodes))
    engine = TailscalePolicyEngine(control_url=CONTROL_URL)
    engine.set_topology(*state.policy_topology())
    engine.set_policy(text)
    state.policy_engine_hooks = PolicyHooks(
        node_upserted=engine.upsert_node, node_removed=engine.remove_node,
        user_upserted=engine.upsert_user, user_removed=engine.remove_user,
        auto_routes=engine.auto_approved_routes,
    )
    state.refresh_auto_approvals()
    mapper = Mapper(config, state, engine, dict)
    out = {}
    for n in state.nodes_sorted():
        full = json.loads(mapper.full_map(MapSession(n.id, False)).body)
        names = {p["ID"]: p["Name"].split(".")[0] for p in full.get("Peers") or []}
        out[n.given_name] = {
            "packet_filter_rules": full["PacketFilter"],
            "peers": {names[p["ID"]]: (sorted(p["AllowedIPs"]),
                                       sorted(p.get("PrimaryRoutes") or []))
                      for p in full.get("Peers") or []},
            "self_primary_routes": sorted(full["Node"].get("PrimaryRoutes") or []),
        }
    return out


def _expected(text: str, topology: dict[str, Any]) -> dict[str, dict[str, Any]]:
    got = compile_topology(TailscalePolicyEngine(control_url=CONTROL_URL), text, topology)
    return {
        name: {
            "packet_filter_rules": view["packet_filter_rules"],
            "peers": {p["name"]: (sorted(p["allowed_ips"]), sorted(p["primary_routes"] or []))
                      for p in view["peers"]},
            "self_primary_routes": sorted(view["self_primary_routes"] or []),
        }
        for name, view in got["nodes"].items()
    }


ROUTE_CASES = [p for p in case_files() if p.parent.name in ("routes", "grant")]


def test_mapper_matches_policytool_on_the_corpus(tmp_path: Path) -> None:
    compared = 0
    assert ROUTE_CASES, "the policy conformance corpus (../shared/conformance/policy) is missing"
    for path in ROUTE_CASES:
        case = load(path)
        if case["expect_error"]:
            continue
        text = json.dumps(case["policy"]) if isinstance(case["policy"], dict) else case["policy"]
        topology = topology_with_ids(case)
        try:
            want = _expected(text, topology)
        except PolicyError:
            continue
        assert _live_views(text, topology, tmp_path) == want, path.name
        compared += 1
    assert compared > 50


# -- recovering from an invalid stored policy ------------------------------------------------


async def test_recovery_from_an_invalid_stored_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: Backend
) -> None:
    data = tmp_path / "data"
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(f"data_dir: {data}\nplugins: [{backend.name}, policy]\n"
                        "policy:\n  mode: database\n" + backend.yaml())
    bad, good = tmp_path / "bad.hujson", tmp_path / "good.hujson"
    bad.write_text('{"acls": [{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}]}')
    good.write_text(ALICE_ONLY)

    def server() -> Server:
        host = PluginHost()
        host.load([backend.name, "policy"])
        return Server(make_config(data, host, plugins=[backend.name, "policy"],
                                  database=backend.database, policy={"mode": "database"}), host)

    # A stored policy this version refuses (say, written by another tool) blocks start-up.
    first = server()
    await first.start()
    assert first.storage is not None
    first.storage.apply([PutPolicy(bad.read_text())])
    await first.stop()
    refused = server()
    with pytest.raises(MeshscaleError, match="Recovering from an invalid policy"):
        await refused.start()
    await refused.stop()

    # What is stored can be read without a server (headscale's flag name works too)...
    capsys.readouterr()
    assert main(["-c", str(cfg_file), "policy", "get", "--offline"]) == 0
    assert capsys.readouterr().out.strip() == bad.read_text()
    # The way out: policy set --offline. A bad file is refused with its location...
    assert main(["-c", str(cfg_file), "policy", "set", "--offline", "--file", str(bad)]) == 1
    assert "acls[0].src[0]" in capsys.readouterr().err
    # ...a good one is stored, and the server starts with it.
    assert main(["-c", str(cfg_file), "policy", "set",
                 "--bypass-grpc-and-access-database-directly", "--file", str(good)]) == 0
    capsys.readouterr()
    assert main(["-c", str(cfg_file), "-o", "json", "policy", "get", "--offline"]) == 0
    assert json.loads(capsys.readouterr().out) == {"policy": ALICE_ONLY}
    running = server()
    await running.start()
    try:
        assert running.policy_text == ALICE_ONLY
        # With the server running, --offline refuses (the server would not see the write).
        code = await asyncio.to_thread(
            main, ["-c", str(cfg_file), "policy", "set", "--offline", "--file", str(good)])
        assert code == 1 and "server is running" in capsys.readouterr().err
    finally:
        await running.stop()


def test_policy_get_offline_in_file_mode_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(f"data_dir: {tmp_path / 'data'}\npolicy:\n  path: acl.hujson\n")
    assert main(["-c", str(cfg_file), "policy", "get", "--offline"]) == 1
    err = capsys.readouterr().err
    assert "policy.mode is 'file'" in err and str(tmp_path / "data" / "acl.hujson") in err
    assert not (tmp_path / "data").exists()  # nothing was created


async def test_approve_routes_through_the_admin_api_and_cli_parser(dbserver: Server) -> None:
    from meshscale.api.admin import create_admin_app
    from meshscale.cli.main import build_parser

    keys = users_and_keys(dbserver, "alice")
    _, _, first = await join(dbserver, keys["alice"], "gw", RoutableIPs=["10.9.0.0/24"])
    rid = first["Node"]["ID"]
    client = create_admin_app(dbserver).test_client()
    resp = await client.post(f"/v1/nodes/{rid}/approve_routes",
                             json={"routes": ["10.9.0.0/24", "10.8.0.0/24"]})
    view = await resp.get_json()
    assert view["approvedRoutes"] == ["10.9.0.0/24", "10.8.0.0/24"]
    assert view["availableRoutes"] == ["10.9.0.0/24"] and view["subnetRoutes"] == ["10.9.0.0/24"]
    bad = await client.post(f"/v1/nodes/{rid}/approve_routes", json={"routes": ["nope"]})
    assert bad.status_code == 400 and "invalid route 'nope'" in (await bad.get_json())["error"]
    args = build_parser().parse_args(["nodes", "approve-routes", "-i", "3", "-r", "10.0.0.0/8,"])
    assert (args.action, args.identifier, args.routes) == ("approve-routes", "3", ["10.0.0.0/8,"])
