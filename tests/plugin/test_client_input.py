"""Issue 11, items 1, 2 and 10: what a client sends is checked against tailcfg's types where it
enters. Each test sends the attack as an attacker would (a registered node's lite update or
registration), shows the refusal the attacker sees, and that the database, the other nodes'
netmaps and a healthy newcomer are untouched."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.simclient import SimNode
from meshscale.testing import make_config
from tests.plugin.simnodes import join, quiet
from tests.plugin.test_bad_input import dump, still_serving, unchanged

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def server(meshscale_server_factory: Callable[..., Any]) -> Server:
    srv: Server = await meshscale_server_factory(plugins=["sqlite"])
    return srv


async def pair(server: Server) -> tuple[SimNode, SimNode, Any]:
    """An attacker node and a victim with an open map stream."""
    assert server.state is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    attacker, _, _ = await join(server, key, "attacker", stream=False)
    victim, stream, _ = await join(server, key, "victim")
    return attacker, victim, stream




async def lite(node: SimNode, **fields: Any) -> tuple[int, bytes]:
    return await node.conn.request("/machine/map", node.map_body(False, **fields))


async def victim_still_fine(server: Server, victim: SimNode) -> dict[str, Any]:
    """The victim's next full map builds and holds only well-formed peers."""
    status, body = await victim.conn.request("/machine/map", victim.map_body(
        False, OmitPeers=False, Compress=""))
    assert status == 200
    msg: dict[str, Any] = json.loads(body[4:])
    peers = {p["Name"].split(".")[0]: p for p in msg["Peers"]}
    assert "attacker" in peers
    return peers["attacker"]


# -- item 1: a value the JSON encoder cannot write stopped every map, across restarts -------


@pytest.mark.parametrize(("fields", "why"), [
    ({"Endpoints": ["\ud800"]}, r"Endpoints[0]: not an ip:port: '\ud800'"),
    ({"Hostinfo": {"Hostname": "attacker", "OSVersion": "\ud800"}},
     "Hostinfo.OSVersion: not valid UTF-8"),
    ({"Hostinfo": {"Hostname": "attacker", "Location": {"Priority": 2**70}}},
     "Hostinfo.Location.Priority: integer out of range"),
    # Python's encoder writes this as Infinity, which Python's decoder reads and Go's refuses.
    ({"Hostinfo": {"Hostname": "attacker", "NetInfo": {"DERPLatency": {"1-v4": 1e400}}}},
     "Hostinfo.NetInfo.DERPLatency['1-v4']: number out of range"),
])
async def test_unencodable_values_are_refused(server: Server, fields: dict[str, Any],
                                              why: str) -> None:
    attacker, victim, _ = await pair(server)
    status, body = await unchanged(server, lambda: lite(attacker, **fields))
    assert status == 400 and why.encode() in body, body
    await victim_still_fine(server, victim)
    await still_serving(server)


async def test_unknown_deep_or_huge_fields_are_not_kept(server: Server) -> None:
    """Fields tailcfg does not have are dropped, as Go's decoder drops them: neither a 300-deep
    nest nor a 70-bit integer there is stored or relayed."""
    attacker, victim, _ = await pair(server)
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    status, _ = await lite(attacker, Hostinfo={**attacker.hostinfo, "Deep": deep,
                                               "Huge": 2**70, "OS": "linux"},
                           Unknown={"x": 2**80})
    assert status == 200
    assert server.state is not None
    stored = next(n for n in server.state.nodes.values() if n.hostname == "attacker")
    assert "Deep" not in stored.hostinfo and "Huge" not in stored.hostinfo
    assert "Deep" not in repr(dump(server))
    await victim_still_fine(server, victim)


async def test_a_poisoned_row_is_repaired_at_start(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Values stored by an older version are repaired once at load, with a warning, and maps
    are built again (before, every full map failed on them, also after a restart)."""
    data = tmp_path / "data"

    def make() -> Server:
        host = PluginHost()
        host.load(["sqlite"])
        return Server(make_config(data, host, plugins=["sqlite"]), host)

    first = make()
    await first.start()
    try:
        _, victim, _ = await pair(first)
    finally:
        await victim.conn.close()
        await first.stop()
    db = sqlite3.connect(data / "db.sqlite")
    bad_hostinfo = ('{"Hostname": "attacker", "OS": 7, "GoVersion": "\\ud800", '
                    '"RoutableIPs": ["garbage", "10.1.0.1/24"], "Priority": 1e999999, '
                    '"Location": {"Priority": 100000000000000000000000}}')
    db.execute("update nodes set hostinfo = ?, endpoints = ? where hostname = 'attacker'",
               (bad_hostinfo, '["\\ud800", "not-an-addrport", "[::1]:5", "1.2.3.4:41641"]'))
    db.commit()
    db.close()

    second = make()
    await second.start()
    try:
        assert second.state is not None
        node = next(n for n in second.state.nodes.values() if n.hostname == "attacker")
        assert node.hostinfo == {"Hostname": "attacker", "RoutableIPs": ["10.1.0.0/24"]}
        assert node.endpoints == ("[::1]:5", "1.2.3.4:41641")
        assert "Hostinfo.OS: expected a string, got a number" in caplog.text
        assert "Endpoints[1]: not an ip:port" in caplog.text
        await still_serving(second)
        stored = sqlite3.connect(data / "db.sqlite").execute(
            "select hostinfo, endpoints from nodes where hostname = 'attacker'").fetchone()
        assert json.loads(stored[0]) == node.hostinfo  # repaired once, in the database too
        assert json.loads(stored[1]) == list(node.endpoints)
    finally:
        await second.stop()


# -- item 2: malformed values that Go clients reject took their whole netmap down ----------


@pytest.mark.parametrize(("fields", "why"), [
    ({"Endpoints": ["not-an-addrport"]}, "Endpoints[0]: not an ip:port: 'not-an-addrport'"),
    ({"Endpoints": ["1.2.3.4"]}, "Endpoints[0]: not an ip:port"),
    ({"Endpoints": ["::1:5"]}, "Endpoints[0]: not an ip:port"),
    ({"Endpoints": "1.2.3.4:5"}, "Endpoints: expected a list, got a string"),
    ({"Hostinfo": {"Hostname": "attacker", "OS": 7}},
     "Hostinfo.OS: expected a string, got a number"),
    ({"Hostinfo": {"Hostname": "attacker", "RoutableIPs": ["garbage"]}},
     "Hostinfo.RoutableIPs[0]: not an IP prefix: 'garbage'"),
    ({"Hostinfo": {"Hostname": "attacker", "ShieldsUp": "yes"}},
     "Hostinfo.ShieldsUp: expected true or false"),
    ({"Hostinfo": {"Hostname": "attacker", "Services": [{"Proto": "tcp", "Port": 70000}]}},
     "Hostinfo.Services[0].Port: integer out of range"),
    ({"Hostinfo": {"Hostname": "attacker", "Services": [[[[[{"Proto": "tcp"}]]]]]}},
     "Hostinfo.Services[0]: expected an object, got a list"),
    ({"Hostinfo": {"Hostname": "x" * 2000}}, "Hostinfo.Hostname: longer than 1024"),
    ({"Hostinfo": "linux"}, "Hostinfo: expected an object"),
    ({"Version": "130"}, "Version: expected an integer"),
    ({"DiscoKey": "discokey:zz"}, "DiscoKey: not a discokey:<64 hex digits> key"),
])
async def test_malformed_values_are_refused_and_never_relayed(
        server: Server, fields: dict[str, Any], why: str) -> None:
    attacker, victim, stream = await pair(server)
    before = await victim_still_fine(server, victim)
    await quiet(stream)
    status, body = await unchanged(server, lambda: lite(attacker, **fields))
    assert status == 400 and body.startswith(b"invalid request: ") and why.encode() in body, body
    assert await victim_still_fine(server, victim) == before
    assert await quiet(stream) == []  # nothing reached the victim's stream either
    await still_serving(server)


async def test_register_with_a_malformed_hostinfo_creates_nothing(server: Server) -> None:
    assert server.state is not None
    _, key = server.state.create_key(server.state.create_user("bob"))
    node = SimNode("bad")
    node.hostinfo["RoutableIPs"] = ["10.0.0.0/8", "10.0.0.0/088"]
    await node.conn.connect("127.0.0.1", server.main_port)
    status, body = await unchanged(server, lambda: node.conn.request(
        "/machine/register", node.register_body(key)))
    assert status == 400, body
    assert b"Hostinfo.RoutableIPs[1]: not an IP prefix" in body
    assert not server.state.nodes and not next(iter(server.state.keys.values())).used
    await still_serving(server)


async def test_good_values_are_normalised(server: Server) -> None:
    attacker, victim, _ = await pair(server)
    status, _ = await lite(
        attacker, Endpoints=["[2001:0db8::0001]:41641", "10.0.0.1:41641"],
        Hostinfo={"Hostname": "attacker", "OS": "linux", "RoutableIPs": ["10.2.0.7/16"],
                  "Desktop": None, "Userspace": True, "NetInfo": {"PreferredDERP": 1}})
    assert status == 200
    peer = await victim_still_fine(server, victim)
    assert peer["Endpoints"] == ["[2001:db8::1]:41641", "10.0.0.1:41641"]
    assert peer["Hostinfo"] == {"Hostname": "attacker", "OS": "linux",
                                "RoutableIPs": ["10.2.0.0/16"], "Userspace": True}


# -- item 10: size bound; peers get only the fields they use ------------------------------


async def test_hostinfo_over_the_size_limit_is_refused(server: Server) -> None:
    attacker, victim, _ = await pair(server)
    keys = [f"ssh-ed25519 {'A' * 4000}" for _ in range(16)]
    big = {"Hostname": "attacker", "sshHostKeys": keys,
           "Services": [{"Proto": "tcp", "Port": i, "Description": "d" * 250}
                        for i in range(60)]}
    status, body = await unchanged(server, lambda: lite(attacker, Hostinfo=big))
    assert status == 400 and b"over the limit of 65536 (client_limits.hostinfo_max_bytes)" in body
    await victim_still_fine(server, victim)


async def test_peers_see_only_the_hostinfo_fields_they_use(server: Server) -> None:
    attacker, victim, _ = await pair(server)
    secret = {"Hostname": "attacker", "OS": "linux", "PushDeviceToken": "push-secret",
              "BackendLogID": "log-id", "RequestTags": ["tag:x"], "WoLMACs": ["aa:bb"],
              "NetInfo": {"PreferredDERP": 1, "LinkType": "wifi"},
              "Services": [{"Proto": "peerapi4", "Port": 1234}], "sshHostKeys": ["ssh-ed25519 A"]}
    status, _ = await lite(attacker, Hostinfo=secret)
    assert status == 200
    peer = await victim_still_fine(server, victim)
    assert peer["Hostinfo"] == {"Hostname": "attacker", "OS": "linux",
                                "Services": [{"Proto": "peerapi4", "Port": 1234}],
                                "sshHostKeys": ["ssh-ed25519 A"]}


async def test_updates_over_the_rate_are_coalesced_not_lost(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """A node changing its Hostinfo 30 times as fast as it can: its peers get a burst, then
    about one change per 1/rate seconds, and always the latest value in the end."""
    server = await meshscale_server_factory(
        plugins=["sqlite"], client_limits={"updates_per_second": 4, "update_burst": 3})
    attacker, victim, stream = await pair(server)
    await quiet(stream)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(30):
        status, _ = await lite(attacker, Hostinfo={**attacker.hostinfo, "OSVersion": str(i)})
        assert status == 200
    sent = loop.time() - started
    got = await quiet(stream, wait=1.0)
    elapsed = loop.time() - started
    versions = [p["Hostinfo"]["OSVersion"] for m in got for p in m.get("PeersChanged", [])]
    assert versions[-1] == "29", versions  # the latest value arrives
    assert len(versions) <= 3 + 4 * elapsed + 1, (versions, sent, elapsed)
    assert (await victim_still_fine(server, victim))["Hostinfo"]["OSVersion"] == "29"


async def test_stream_requests_are_rate_limited_too(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """The same limit on the streaming path: a node opening map streams as fast as it can, each
    with new endpoints, makes its peers' maps change a burst, then about rate times a second,
    ending on its latest endpoints; a healthy node joining meanwhile is served at once."""
    server = await meshscale_server_factory(
        plugins=["sqlite"], client_limits={"updates_per_second": 4, "update_burst": 3})
    attacker, victim, stream = await pair(server)
    await quiet(stream)
    assert server.state is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(30):
        # Each request replaces the last stream; the replies are not read (flow control
        # keeps them small), as a hostile client would not read them.
        attacker.open_stream(Endpoints=[f"192.0.2.{i}:41641"], EndpointTypes=[1])
        await asyncio.sleep(0)
    assert server.state is not None
    key = server.state.create_key(server.state.user("alice"), reusable=False)[1]
    newcomer_started = loop.time()
    _, _, first = await join(server, key, "newcomer")
    assert first is not None and loop.time() - newcomer_started < 5
    got = await quiet(stream, wait=1.0)
    elapsed = loop.time() - started
    seen = [ep for m in got
            for p in [*m.get("PeersChangedPatch", []), *m.get("PeersChanged", [])]
            if p.get("Endpoints") and p["Endpoints"][0].startswith("192.0.2.")
            for ep in p["Endpoints"][:1]]
    assert seen and seen[-1] == "192.0.2.29:41641", seen  # the latest value arrives
    assert len(seen) <= 3 + 4 * elapsed + 1, (seen, elapsed)
    assert (await victim_still_fine(server, victim))["Endpoints"][0] == "192.0.2.29:41641"
