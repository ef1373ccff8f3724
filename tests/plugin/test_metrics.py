"""The metrics plugin against in-process servers and simulated nodes (SimNode).

Values are read the way Prometheus reads them: GET /metrics, parsed by prometheus_client.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from meshscale.errors import PolicyError
from meshscale.plugins import metrics as metrics_plugin
from meshscale.plugins.derp.client import DerpClient
from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.conftest import Backend
from tests.interop.realclients import metric, scrape_metrics

pytestmark = pytest.mark.asyncio

Factory = Callable[..., Any]


def base_url(server: Server) -> str:
    exporter = metrics_plugin.exporter_of(server)
    assert exporter is not None
    return f"http://127.0.0.1:{exporter.port}"


async def scrape(server: Server) -> dict[Any, float]:
    return await asyncio.to_thread(scrape_metrics, base_url(server) + "/metrics")


DEBUG_TOKEN = "debug-token-for-tests"


async def debug_page(server: Server, page: str, token: str | None = DEBUG_TOKEN) -> Any:
    def get() -> Any:
        req = urllib.request.Request(base_url(server) + "/debug/" + page)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    return await asyncio.to_thread(get)


async def join(server: Server, name: str, key: str) -> tuple[SimNode, Any]:
    node = SimNode(name)
    await node.conn.connect("127.0.0.1", server.main_port)
    resp = await node.register(key)
    assert resp["MachineAuthorized"] is True, resp
    stream = node.open_stream()
    assert await stream.next() is not None  # the full map
    return node, stream


async def eventually(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_values_move_with_registrations_streams_and_policy(
    meshscale_server_factory: Factory, backend: Backend,
) -> None:
    # On both storage backends: registrations and policy loads are writes.
    server: Server = await meshscale_server_factory(
        plugins=[backend.name, "policy", "metrics"], metrics_listen_addr="127.0.0.1:0",
        policy={"mode": "database"}, database=backend.database)
    assert server.state is not None
    s = await scrape(server)
    assert metric(s, "meshscale_nodes") == 0 and metric(s, "meshscale_map_streams") == 0
    assert metric(s, "meshscale_build_info", version=__import__("meshscale").__version__) == 1

    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    a, _ = await join(server, "a", key)
    b, _ = await join(server, "b", key)

    s = await scrape(server)
    assert metric(s, "meshscale_nodes") == 2
    assert metric(s, "meshscale_nodes_online") == 2
    assert metric(s, "meshscale_map_streams") == 2
    assert metric(s, "meshscale_registrations_total", method="authkey", result="ok") == 2
    assert metric(s, "meshscale_registration_duration_seconds_count", method="authkey") == 2
    assert metric(s, "meshscale_map_responses_total", kind="full") == 2
    assert metric(s, "meshscale_map_responses_total", kind="delta") >= 1  # a learned of b
    assert metric(s, "meshscale_map_response_bytes_total", kind="full") > 200
    assert metric(s, "meshscale_map_build_duration_seconds_count", kind="full") == 2
    assert metric(s, "meshscale_map_build_duration_seconds_count", kind="delta") >= 1
    assert metric(s, "meshscale_map_streams_opened_total") == 2
    assert metric(s, "meshscale_node_events_total", kind="registered") == 2
    assert metric(s, "meshscale_node_events_total", kind="online") == 2

    # A refused registration is counted as such.
    bad = SimNode("bad")
    await bad.conn.connect("127.0.0.1", server.main_port)
    assert "Error" in await bad.register("mskey-auth-nope")
    await bad.conn.close()

    # Policy: one good load, one refused.
    server.set_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}',
                      "database", persist=True)
    with pytest.raises(PolicyError):
        server.set_policy('{"acls": [{"action": "nope"}]}', "database", persist=True)

    await b.conn.close()

    async def b_gone() -> Any:
        got = await scrape(server)
        return metric(got, "meshscale_nodes_online") == 1 and got

    s = await eventually(b_gone, "b offline")
    assert metric(s, "meshscale_map_streams") == 1
    assert metric(s, "meshscale_map_streams_closed_total") == 1
    assert metric(s, "meshscale_node_events_total", kind="offline") == 1
    # Core reports a refused registration's method as "unknown" when it fails before knowing it.
    refused = [v for (name, labels), v in s.items()
               if name == "meshscale_registrations_total" and ("result", "refused") in labels]
    assert sum(refused) == 1
    assert metric(s, "meshscale_policy_reloads_total", source="database", result="ok") == 1
    assert metric(s, "meshscale_policy_reloads_total", source="database", result="error") == 1
    await a.conn.close()


async def test_debug_pages_show_state_and_hide_secrets(meshscale_server_factory: Factory,
                                                       backend: Backend) -> None:
    mesh_key = "ab" * 32
    # The PostgreSQL password is redacted whether that database is in use or not (the test
    # server trusts local connections: the password is sent and not needed).
    database = {**backend.database, "postgres": {**backend.database.get("postgres", {}),
                                                  "password": "hunter2"}}
    server: Server = await meshscale_server_factory(
        plugins=[backend.name, "metrics"], metrics_listen_addr="127.0.0.1:0",
        derp={"server": {"mesh_key": mesh_key, "stun_listen_addr": "127.0.0.1:0"},
              "auto_update_enabled": False},
        database=database, metrics_debug_token=DEBUG_TOKEN)
    assert server.state is not None
    user = server.state.create_user("bob")
    _, key = server.state.create_key(user, reusable=True)
    node, _ = await join(server, "n1", key)

    index = await debug_page(server, "")
    assert "/debug/config" in index["pages"]
    config = await debug_page(server, "config")
    text = json.dumps(config)
    assert mesh_key not in text and "hunter2" not in text
    assert config["derp"]["server"]["mesh_key"] == "<redacted>"
    assert config["noise"]["private_key_path"] == "noise_private.key"  # a path, not a secret
    assert config["listen_addr"] == server.config.listen_addr
    nodes = await debug_page(server, "nodes")
    assert [n["name"] for n in nodes] == ["n1"] and nodes[0]["online"] is True
    sessions = await debug_page(server, "sessions")
    assert [s["nodeId"] for s in sessions] == [nodes[0]["id"]]
    assert sessions[0]["sent"]["full"] == 1
    policy = await debug_page(server, "policy")
    assert policy["policy"] is None and policy["mode"] == "file"
    stats = await debug_page(server, "stats")
    assert stats["nodes_total"] == 1
    with pytest.raises(urllib.error.HTTPError):
        await debug_page(server, "nothing-here")
    await node.conn.close()


async def test_derp_clients_and_relayed_bytes(meshscale_server_factory: Factory) -> None:
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "derp", "stun", "metrics"], metrics_listen_addr="127.0.0.1:0",
        derp={"server": {"verify_clients": False, "stun_listen_addr": "127.0.0.1:0"},
              "auto_update_enabled": False})
    s = await scrape(server)
    assert metric(s, "meshscale_derp_clients") == 0
    a = await DerpClient.connect("127.0.0.1", server.main_port)
    b = await DerpClient.connect("127.0.0.1", server.main_port)
    await a.send(b.public_key, b"x" * 1000)
    assert await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"x" * 1000)
    s = await scrape(server)
    assert metric(s, "meshscale_derp_clients") == 2
    assert metric(s, "meshscale_derp_relayed_bytes_total") >= 1000
    assert metric(s, "meshscale_derp_relayed_packets_total") >= 1
    await a.close()
    await b.close()


async def test_two_servers_count_separately_and_empty_addr_disables(
    meshscale_server_factory: Factory,
) -> None:
    one: Server = await meshscale_server_factory(
        plugins=["sqlite", "metrics"], metrics_listen_addr="127.0.0.1:0")
    two: Server = await meshscale_server_factory(
        plugins=["sqlite", "metrics"], metrics_listen_addr="127.0.0.1:0")
    off: Server = await meshscale_server_factory(
        plugins=["sqlite", "metrics"], metrics_listen_addr="")
    assert metrics_plugin.exporter_of(off) is None
    assert one.state is not None
    _, key = one.state.create_key(one.state.create_user("u"), reusable=True)
    node, _ = await join(one, "only-on-one", key)
    assert metric(await scrape(one), "meshscale_registrations_total",
                  method="authkey", result="ok") == 1
    assert metric(await scrape(two), "meshscale_registrations_total",
                  method="authkey", result="ok") == 0
    await node.conn.close()
