"""Device approval with the real Tailscale client (v1.102.5): ``node.approval: manual``.

A new node waits whether it logged in with a pre-auth key or interactively: the client is in
NeedsMachineAuth ("Machine is not yet approved by tailnet admin."), the peers' netmaps do not
hold it and no traffic passes. ``meshscale nodes approve -i ID`` lets it in: the waiting
``tailscale up`` finishes by itself, both see each other and pings work. A key made with
``--pre-approved`` registers a node that is Running at once. ``meshscale nodes unapprove`` takes
a running node back out: it is in NeedsMachineAuth again, its peers drop it and no traffic
passes until it is approved again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.realclients import MeshscaleProcess, stop_process, wait_for
from tests.interop.tailscaled import Tailscaled
from tests.interop.test_login import InteractiveUp, page

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

Make = Callable[..., Tailscaled]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MeshscaleProcess]:
    srv = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"], "node:\n  approval: manual\n")
    srv.start()
    srv.cli("users", "create", "alice")
    try:
        yield srv
    finally:
        srv.stop()


class KeyUp:
    """``tailscale up --authkey`` in the background: with approval pending it waits."""

    def __init__(self, node: Tailscaled, login_server: str, key: str) -> None:
        self.out = node.dir / "up.out"
        self.proc = subprocess.Popen(
            [str(node.cli_binary), f"--socket={node.socket}", "up",
             f"--login-server={login_server}", f"--authkey={key}", f"--hostname={node.name}",
             "--timeout=120s"],
            stdout=self.out.open("wb"), stderr=subprocess.STDOUT, env=node.env,
        )

    def text(self) -> str:
        return self.out.read_text(errors="replace")


def waits_for_approval(node: Tailscaled) -> None:
    wait_for(lambda: node.status()["BackendState"] == "NeedsMachineAuth", 30,
             f"{node.name} to wait for approval (NeedsMachineAuth)")
    text = node.cli("status", check=False)
    assert "Machine is not yet approved by tailnet admin." in text.stdout + text.stderr


def approve(server: MeshscaleProcess, name: str) -> None:
    node = server.nodes()[name]
    assert node["approved"] is False
    out = server.cli("nodes", "approve", "-i", str(node["id"]))
    # The table's Approved column, on the node's first line (its IPs take two)
    assert out.splitlines()[1].rstrip().endswith("yes")


def test_key_and_interactive_logins_wait_for_approval(server: MeshscaleProcess,
                                                      tailscaled: Make) -> None:
    a, b = tailscaled("alpha"), tailscaled("beta")
    a.start()
    b.start()
    key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")["key"]

    # A pre-auth key: the node registers and waits; `tailscale up` says where to go.
    up = KeyUp(a, server.url, key)
    try:
        waits_for_approval(a)
        wait_for(lambda: f"{server.url}/admin" in up.text(), 10, "tailscale up to print "
                 "the approval URL")
        status, text = page(f"{server.url}/admin")
        assert status == 200 and "meshscale nodes approve -i ID" in text
        assert up.proc.poll() is None
        table = server.cli("nodes", "list")
        # headscale's layout: the header, then the node's row (its IPs go on to a second line),
        # every cell padded to its column's width
        assert "Approved" in table.splitlines()[0] and \
            table.splitlines()[1].rstrip().endswith("no")
        approve(server, "alpha")
        started = time.monotonic()
        assert up.proc.wait(15) == 0, up.text()
        assert time.monotonic() - started < 5, "the waiting client did not proceed by itself"
    finally:
        stop_process(up.proc)  # type: ignore[arg-type]
    assert a.status()["BackendState"] == "Running"

    # Interactive: registered by an admin, then it still waits for approval.
    login = InteractiveUp(b, server.url)
    try:
        _url, auth_id = login.auth_url()
        server.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        waits_for_approval(b)
        beta_ip = server.nodes()["beta"]["ip_addresses"][0]
        alpha_ip = server.nodes()["alpha"]["ip_addresses"][0]
        # Neither netmap holds the other, and no traffic passes either way.
        time.sleep(2)  # any (wrong) delta would have arrived by now
        assert "beta" not in a.peers() and not b.peers()
        for node, ip in ((a, beta_ip), (b, alpha_ip)):
            ping = node.cli("ping", "--until-direct=false", "-c", "1", "--timeout=3s", ip,
                            check=False, timeout=20)
            assert "pong" not in ping.stdout, ping.stdout

        approve(server, "beta")
        assert login.wait(15) == 0, login.text()
    finally:
        login.stop()
    assert b.status()["BackendState"] == "Running"
    wait_for(lambda: "beta" in a.peers(), 20, "alpha to see beta")
    wait_for(lambda: "alpha" in b.peers(), 20, "beta to see alpha")
    assert "pong from alpha" in b.cli("ping", "--until-direct=false", "-c", "3", "alpha").stdout
    assert "pong from beta" in a.cli("ping", "--until-direct=false", "-c", "3", "beta").stdout

    # A pre-approved key (Tailscale's "preauthorized"): the node is Running at once, no admin.
    c = tailscaled("gamma")
    c.start()
    pre = server.cli("preauthkeys", "create", "--user", "alice", "--pre-approved", "-o", "json")
    assert pre["preauthorized"] is True
    started = time.monotonic()
    c.up(server.url, pre["key"])  # returns once Running: it never waited for approval
    assert time.monotonic() - started < 30
    assert c.status()["BackendState"] == "Running"
    assert server.nodes()["gamma"]["approved"] is True
    wait_for(lambda: "gamma" in a.peers(), 20, "alpha to see gamma")
    assert "pong from alpha" in c.cli("ping", "--until-direct=false", "-c", "3", "alpha").stdout

    # Unapproved (Tailscale's authorized: false): cut off at once, back when approved again.
    out = server.cli("nodes", "unapprove", "-i", str(server.nodes()["beta"]["id"]), "--force")
    assert out.splitlines()[1].rstrip().endswith("no")  # the Approved column
    waits_for_approval(b)
    wait_for(lambda: "beta" not in a.peers() and "beta" not in c.peers(), 20,
             "alpha and gamma to drop beta")
    wait_for(lambda: not b.peers(), 20, "beta to hold no peers")
    for node, ip in ((a, beta_ip), (b, alpha_ip)):
        ping = node.cli("ping", "--until-direct=false", "-c", "1", "--timeout=3s", ip,
                        check=False, timeout=20)
        assert "pong" not in ping.stdout, ping.stdout
    approve(server, "beta")
    wait_for(lambda: b.status()["BackendState"] == "Running", 20, "beta to run again")
    wait_for(lambda: "beta" in a.peers(), 20, "alpha to see beta again")
    assert "pong from alpha" in b.cli("ping", "--until-direct=false", "-c", "3", "alpha").stdout
