"""Tailscale SSH between real tailscaled v1.102.5 nodes, inside the netns.

Tailscale's control plane gives every node ``https://tailscale.com/cap/ssh`` (without it the
client refuses ``tailscale up --ssh``); who may connect as whom is the SSHPolicy meshscale's policy
engine renders from the policy's ``ssh`` section. Here alice's ``client`` runs ``tailscale ssh``
to alice's ``sshd`` in accept mode; bob's node, which the rule does not cover, is refused.

What this cannot show: the command's output. tailscaled's SSH incubator calls setgroups(2) before
running the command, and an unprivileged user namespace (the test's netns, ``unshare -rn``)
refuses that with EPERM, so the session ends with exit code 1 after sshd granted access.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import Tailscaled, start_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

POLICY = {
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],
             "users": ["root"]}],
}
SSH_CAP = "https://tailscale.com/cap/ssh"
DENIED = "tailnet policy does not permit you to SSH to this node"  # the client's words


def test_tailscale_ssh_accept_mode(tmp_path: Path,
                                   tailscaled: Callable[..., Tailscaled]) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "policy"],
                              extra="policy:\n  mode: database\n")
    server.start()
    try:
        policy = tmp_path / "policy.hujson"
        policy.write_text(json.dumps(POLICY))
        server.cli("policy", "set", "--file", str(policy))
        keys = {}
        for user in ("alice", "bob"):
            server.cli("users", "create", user)
            keys[user] = server.cli("preauthkeys", "create", "-u", user, "--reusable",
                                    "-o", "json")["key"]
        sshd, client, other = tailscaled("sshd"), tailscaled("client"), tailscaled("other")
        start_all([sshd, client, other])
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda nk: nk[0].up(server.url, keys[nk[1]]),
                          [(client, "alice"), (other, "bob")]))
            # The client accepts --ssh only with cap/ssh in its netmap.
            sshd.up(server.url, keys["alice"], "--ssh")
        assert SSH_CAP in (sshd.status()["Self"].get("CapMap") or {})
        assert sshd.json("debug", "prefs")["RunSSH"] is True
        wait_for(lambda: "sshd" in client.peers() and "sshd" in other.peers(), 30,
                 "both see sshd")
        # The server's SSH host keys reach its peers (tailscale ssh trusts only those).
        wait_for(lambda: client.peers()["sshd"].get("sshHostKeys"), 30, "sshd's host keys")

        # alice's client is let in as root by sshd's SSHPolicy (sshd's own audit log says so).
        # The command itself cannot run here: tailscaled's incubator calls setgroups, which an
        # unprivileged user namespace (the test's netns) refuses with EPERM.
        mine = client.cli("ssh", "root@sshd", "echo", "hello", check=False, timeout=60)
        assert DENIED not in mine.stderr, mine.stderr
        granted = 'access granted to alice as ssh-user "root"'
        wait_for(lambda: granted in sshd.log_text(), 10, "sshd to let alice in")
        assert "audit: SSH login: user=root uid=0 from=" in sshd.log_text()

        # bob's node, which no rule covers, is refused before any session starts.
        refused = other.cli("ssh", "root@sshd", "echo", "nope", check=False, timeout=60)
        assert refused.returncode != 0 and DENIED in refused.stderr, refused
        assert "ts_user=bob" not in sshd.log_text()
    finally:
        server.stop()
