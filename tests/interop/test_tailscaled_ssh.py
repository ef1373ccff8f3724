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

import re
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
        server.set_policy(POLICY)
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


CHECK_POLICY = {
    "tagOwners": {"tag:server": ["alice@"]},
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["tag:server"],
             "users": ["root"], "checkPeriod": "1h"}],
}
BANNER = "# Tailscale SSH requires an additional check."


def test_tailscale_ssh_check_mode(tmp_path: Path,
                                  tailscaled: Callable[..., Tailscaled]) -> None:
    """A check rule: sshd's tailscaled holds the connection and asks meshscale's
    /machine/ssh/action; the SSH user sees the AuthURL; `meshscale auth approve` lets the
    connection through; within checkPeriod the next one goes through without a check."""
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "policy"],
                              extra="policy:\n  mode: database\n")
    server.start()

    def server_log() -> str:
        return server.log.read_text(errors="replace")

    try:
        server.set_policy(CHECK_POLICY)
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "-u", "alice", "--reusable", "-o",
                         "json")["key"]
        tagged = server.cli("preauthkeys", "create", "-u", "alice", "--tags", "tag:server",
                            "-o", "json")["key"]
        sshd, client = tailscaled("sshd"), tailscaled("client")
        start_all([sshd, client])
        client.up(server.url, key)
        sshd.up(server.url, tagged, "--ssh")
        wait_for(lambda: client.peers().get("sshd", {}).get("sshHostKeys"), 30,
                 "sshd's host keys")

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.cli, "ssh", "root@sshd", "true", check=False,
                                timeout=90)
            waits = re.compile(r"SSH check \S+ waits: .*?(https?://\S+/register/(\S{24}))")
            found = wait_for(lambda: waits.search(server_log()), 30,
                             "sshd's tailscaled to ask meshscale for the SSH action")
            assert found is not None
            url, auth_id = found.group(1), found.group(2)
            assert not first.done()  # held until the check is approved
            shown = server.cli("auth", "approve", "--auth-id", url, "-o", "json")
            assert shown["approved"] is True and shown["localUser"] == "root"
            out = first.result(timeout=60)
        # The SSH user was shown the URL (tailssh sends the action's message as a banner) and
        # sshd let alice in (the command itself cannot run in the netns: setgroups).
        assert BANNER in out.stderr and auth_id in out.stderr, out.stderr
        granted = 'access granted to alice as ssh-user "root"'
        wait_for(lambda: granted in sshd.log_text(), 10, "sshd to let alice in")
        assert f"SSH check {auth_id[:6]} approved" in server_log()

        # Within checkPeriod: no check, no banner.
        again = client.cli("ssh", "root@sshd", "true", check=False, timeout=60)
        assert BANNER not in again.stderr, again.stderr
        wait_for(lambda: sshd.log_text().count(granted) >= 2, 10, "the second connection")
        assert "checked " in server_log() and "accepted" in server_log()
    finally:
        server.stop()
