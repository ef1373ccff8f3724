"""Taildrop between real tailscaled v1.102.5 nodes, inside the netns.

Tailscale's control plane switches Taildrop on with the ``https://tailscale.com/cap/file-sharing``
node capability; the client then offers as file targets its peers of the same user (tagged nodes
and other users' nodes are not targets), and its PeerAPI accepts files only from those. meshscale
sends the capability when ``taildrop.enabled`` (headscale's key, on by default).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import Tailscaled, start_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

Make = Callable[..., Tailscaled]
FILE_SHARING = "https://tailscale.com/cap/file-sharing"


def targets(node: Tailscaled) -> set[str]:
    """The host names ``tailscale file cp --targets`` offers (lines: IP, DNS name, ...)."""
    out = node.cli("file", "cp", "--targets").stdout
    return {line.split()[1].split(".")[0] for line in out.splitlines() if line.strip()}


def self_caps(node: Tailscaled) -> set[str]:
    self_ = node.status()["Self"]
    return set(self_.get("CapMap") or {}) | set(self_.get("Capabilities") or [])


def start_server(tmp_path: Path, extra: str = "") -> MeshscaleProcess:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"], extra)
    server.start()
    return server


def up_users(server: MeshscaleProcess, nodes: dict[Tailscaled, str]) -> None:
    """Join each node as the given user (created here), all at once."""
    keys = {}
    for user in sorted(set(nodes.values())):
        server.cli("users", "create", user)
        keys[user] = server.cli("preauthkeys", "create", "-u", user, "--reusable",
                                "-o", "json")["key"]
    start_all(nodes)
    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(lambda n: n.up(server.url, keys[nodes[n]]), nodes))


def test_taildrop_between_nodes_of_one_user(tmp_path: Path, tailscaled: Make) -> None:
    server = start_server(tmp_path)
    try:
        a1, a2, b1 = tailscaled("aone"), tailscaled("atwo"), tailscaled("bone")
        up_users(server, {a1: "alice", a2: "alice", b1: "bob"})
        tagged = tailscaled("tsrv")
        tagged.start()
        tagged.up(server.url, server.cli("preauthkeys", "create", "--tags", "tag:server",
                                         "-o", "json")["key"])
        wait_for(lambda: set(a1.peers()) == {"atwo", "bone", "tsrv"}, 30, "aone sees 3 peers")
        assert FILE_SHARING in self_caps(a1)

        # Targets are the same user's nodes only: bob's node and the tagged node are peers, not
        # targets.
        assert wait_for(lambda: targets(a1) == {"atwo"}, 30, "aone's file targets")
        assert targets(b1) == set()
        assert targets(a2) == {"aone"}

        payload = bytes(range(256)) * 4096 + b"the end\n"  # 1 MiB and a bit, every byte value
        src = tmp_path / "report.bin"
        src.write_bytes(payload)
        a1.cli("file", "cp", str(src), "atwo:", timeout=90)
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        a2.cli("file", "get", "--wait", str(inbox), timeout=90)
        assert (inbox / "report.bin").read_bytes() == payload

        # bob's node cannot send to alice's: the sending client refuses a non-target.
        other = b1.cli("file", "cp", str(src), "aone:", check=False, timeout=60)
        assert other.returncode != 0, other.stdout
    finally:
        server.stop()


def test_taildrop_disabled_sends_no_capability(tmp_path: Path, tailscaled: Make) -> None:
    server = start_server(tmp_path, "taildrop:\n  enabled: false\n")
    try:
        a1, a2 = tailscaled("aone"), tailscaled("atwo")
        up_users(server, {a1: "alice", a2: "alice"})
        wait_for(lambda: set(a1.peers()) == {"atwo"}, 30, "aone sees atwo")
        assert FILE_SHARING not in self_caps(a1)
        out = a1.cli("file", "cp", "--targets", check=False)
        assert out.returncode != 0
        assert "file sharing not enabled" in (out.stderr + out.stdout)
    finally:
        server.stop()
