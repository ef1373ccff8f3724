"""Two servers in one process with different plugin sets share nothing: each has its own plugin
objects bound to its own context, its own plugin state, and stopping one (its plugins' shutdown)
leaves the other serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from meshscale.plugins.derp import DerpPlugin
from meshscale.plugins.derp.client import DerpClient
from meshscale.plugins.metrics import MetricsPlugin
from meshscale.plugins.stun import StunPlugin
from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.interop.realclients import metric, scrape_metrics

pytestmark = pytest.mark.asyncio

Factory = Callable[..., Any]
FULL = ["sqlite", "derp", "stun", "metrics"]


def full_config() -> dict[str, Any]:
    return {"metrics_listen_addr": "127.0.0.1:0",
            "derp": {"server": {"verify_clients": False, "stun_listen_addr": "127.0.0.1:0"},
                     "auto_update_enabled": False}}


async def scrape(server: Server) -> dict[Any, float]:
    plugin = server.host.plugin("metrics")
    assert isinstance(plugin, MetricsPlugin) and plugin.exporter is not None
    url = f"http://127.0.0.1:{plugin.exporter.port}/metrics"
    return await asyncio.to_thread(scrape_metrics, url)


async def join(server: Server, name: str) -> SimNode:
    assert server.state is not None
    user = server.state.users.get(1) or server.state.create_user("u")
    _, key = server.state.create_key(user, reusable=True)
    node = SimNode(name)
    await node.conn.connect("127.0.0.1", server.main_port)
    assert (await node.register(key))["MachineAuthorized"] is True
    assert await node.open_stream().next() is not None
    return node


async def relays(server: Server) -> bool:
    a = await DerpClient.connect("127.0.0.1", server.main_port)
    b = await DerpClient.connect("127.0.0.1", server.main_port)
    try:
        await a.send(b.public_key, b"ping")
        return await asyncio.wait_for(b.recv_packet(), 5) == (a.public_key, b"ping")
    finally:
        await a.close()
        await b.close()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_two_servers_with_different_plugins_share_nothing(
    meshscale_server_factory: Factory,
) -> None:
    full: Server = await meshscale_server_factory(plugins=FULL, **full_config())
    twin: Server = await meshscale_server_factory(plugins=FULL, **full_config())
    bare: Server = await meshscale_server_factory(plugins=["sqlite"])

    # Each server made its own objects, bound to its own context.
    for name in FULL:
        mine, other = full.host.plugin(name), twin.host.plugin(name)
        assert mine is not None and other is not None and mine is not other, name
        assert mine.server.config is full.config  # type: ignore[attr-defined]
        assert other.server.config is twin.config  # type: ignore[attr-defined]
    assert bare.host.plugin("sqlite") not in (full.host.plugin("sqlite"),
                                              twin.host.plugin("sqlite"))
    assert [bare.host.plugin(n) for n in ("derp", "stun", "metrics")] == [None] * 3
    derp_full, derp_twin = full.host.plugin("derp"), twin.host.plugin("derp")
    stun_full, stun_twin = full.host.plugin("stun"), twin.host.plugin("stun")
    assert isinstance(derp_full, DerpPlugin) and isinstance(derp_twin, DerpPlugin)
    assert isinstance(stun_full, StunPlugin) and isinstance(stun_twin, StunPlugin)
    assert derp_full.service() is not derp_twin.service()
    assert stun_full.bound_port and stun_twin.bound_port
    assert stun_full.bound_port != stun_twin.bound_port

    # Each advertises its own relay and STUN port; the bare server has no embedded region.
    region_full = full.derp_map()["Regions"]["999"]["Nodes"][0]
    region_twin = twin.derp_map()["Regions"]["999"]["Nodes"][0]
    assert region_full["STUNPort"] == stun_full.bound_port
    assert region_twin["STUNPort"] == stun_twin.bound_port
    assert "999" not in bare.derp_map()["Regions"]
    assert "derp_clients" not in bare.stats()

    # State is not shared: what happens on one is seen by that one only.
    node = await join(full, "on-full")
    other = await join(bare, "on-bare")
    assert await relays(full)
    s_full, s_twin = await scrape(full), await scrape(twin)
    assert metric(s_full, "meshscale_registrations_total", method="authkey", result="ok") == 1
    assert metric(s_twin, "meshscale_registrations_total", method="authkey", result="ok") == 0
    assert metric(s_full, "meshscale_derp_relayed_packets_total") >= 1
    assert metric(s_twin, "meshscale_derp_relayed_packets_total") == 0
    assert metric(s_twin, "meshscale_nodes") == 0

    # Stopping one runs its plugins' shutdown (its metrics and STUN ports close, its relay
    # forgets its service) and leaves the others serving.
    twin_metrics = twin.host.plugin("metrics")
    assert isinstance(twin_metrics, MetricsPlugin) and twin_metrics.exporter is not None
    twin_port = twin_metrics.exporter.port
    await twin.stop()
    assert twin_metrics.exporter is None and await refused(twin_port)
    assert stun_twin.bound_port is None and derp_twin.meshscale_derp_regions(twin.config) == []
    assert await relays(full)
    late = await join(full, "after-twin-stopped")
    s_full = await scrape(full)
    assert metric(s_full, "meshscale_registrations_total", method="authkey", result="ok") == 2
    assert full.stats()["nodes_total"] == 2 and bare.stats()["nodes_total"] == 1
    for n in (node, other, late):
        await n.conn.close()
