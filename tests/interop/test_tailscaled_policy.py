"""Live policy changes seen by tailscaled v1.102.5 (the second client after tsnet v1.90.9 in
test_policy_live.py), inside the netns.

alice has ``web`` (a tailscaled node whose tailnet port is handed to a service on the host's
loopback) and ``aprobe``; mallory has ``mprobe``. The policy decides which peers each node sees
(``tailscale status``) and whose connections get through; ``meshscale policy set`` changes both
on the running daemons.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import Tailscaled, get_via_proxy, http_service, start_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

ALICE_ONLY = {"acls": [{"action": "accept", "src": ["alice@"], "dst": ["alice@:*"]}]}
MALLORY_TOO = {"acls": [{"action": "accept", "src": ["alice@", "mallory@"],
                         "dst": ["alice@:*"]}]}


def reaches(node: Tailscaled, url: str) -> bool:
    try:
        return get_via_proxy(node, url, timeout=3) == b"hello from web"
    except (OSError, AssertionError):
        return False


def test_live_policy_changes_reach_tailscaled(tmp_path: Path,
                                              tailscaled: Callable[..., Tailscaled]) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "policy"],
                              extra="policy:\n  mode: database\n")
    server.start()
    try:
        server.cli("users", "create", "alice")
        server.cli("users", "create", "mallory")
        server.set_policy(ALICE_ONLY)
        akey = server.cli("preauthkeys", "create", "-u", "alice", "--reusable", "-o", "json")
        mkey = server.cli("preauthkeys", "create", "-u", "mallory", "-o", "json")
        web = tailscaled("web")
        aprobe, mprobe = tailscaled("aprobe", http_proxy=True), tailscaled("mprobe",
                                                                            http_proxy=True)
        start_all([web, aprobe, mprobe])
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda nk: nk[0].up(server.url, nk[1]["key"]),
                          [(web, akey), (aprobe, akey), (mprobe, mkey)]))
        web_ip = server.nodes()["web"]["ip_addresses"][0]

        with http_service("127.0.0.1", b"hello from web") as port:
            url = f"http://{web_ip}:{port}/"
            # alice's nodes see and reach each other; mallory's sees nobody and gets nowhere.
            assert wait_for(lambda: reaches(aprobe, url), 30, "aprobe -> web")
            assert set(aprobe.peers()) == {"web"} and set(web.peers()) == {"aprobe"}
            assert mprobe.peers() == {}
            assert not reaches(mprobe, url)

            # Open to mallory: the same daemons get web (and aprobe) as peers, and connect.
            server.set_policy(MALLORY_TOO)
            wait_for(lambda: set(mprobe.peers()) == {"web", "aprobe"}, 10, "mprobe's new peers")
            assert wait_for(lambda: reaches(mprobe, url), 10, "mprobe -> web")
            assert reaches(aprobe, url)

            # Closed again: mallory loses them, alice keeps hers.
            server.set_policy(ALICE_ONLY)
            wait_for(lambda: mprobe.peers() == {}, 10, "mprobe's peers gone")
            assert not reaches(mprobe, url)
            assert reaches(aprobe, url)
    finally:
        server.stop()
