"""The real Tailscale client against meshscale: tailscaled and the tailscale CLI, v1.102.5.

What users run on laptops and servers, built from its Go module by scripts/build-tailscale and
started per node by the ``tailscaled`` fixture (userspace networking, inside the test's network
namespace). Everything is checked through the client's own CLI and meshscale's own CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import Tailscaled, start_all, up_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

BASE_DOMAIN = "meshscale.net"  # dns.base_domain's default

Make = Callable[..., Tailscaled]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MeshscaleProcess]:
    """meshscale with SQLite, the embedded DERP relay and STUN, and a user alice."""
    srv = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"])
    srv.start()
    try:
        srv.cli("users", "create", "alice")
        yield srv
    finally:
        srv.stop()


def authkey(server: MeshscaleProcess, *flags: str) -> str:
    key: str = server.cli("preauthkeys", "create", "--user", "alice", *flags, "-o", "json")["key"]
    return key


def join(server: MeshscaleProcess, tailscaled: Make, *names: str,
         **kwargs: Any) -> list[Tailscaled]:
    """Start one tailscaled per name and ``tailscale up`` them all with one reusable key."""
    nodes = [tailscaled(name, **kwargs) for name in names]
    start_all(nodes)
    up_all(nodes, server.url, authkey(server, "--reusable"))
    return nodes


def test_join_with_preauth_key_and_status_matches_meshscale(
        server: MeshscaleProcess, tailscaled: Make) -> None:
    a, b = join(server, tailscaled, "alpha", "beta")
    listed = wait_for(lambda: (n := server.nodes()) and all(x["online"] for x in n.values())
                      and len(n) == 2 and n, 30, "both nodes online in meshscale")

    for me, other in ((a, b), (b, a)):
        st = me.status()
        assert st["BackendState"] == "Running", st["BackendState"]
        assert st["Version"].startswith("1.102.5"), st["Version"]
        mine, theirs = listed[me.name], listed[other.name]
        self_ = st["Self"]
        # The client's view of itself is meshscale's record of it.
        assert self_["TailscaleIPs"] == mine["ipAddresses"]
        assert self_["PublicKey"] == mine["nodeKey"]
        assert self_["HostName"] == me.name
        assert self_["DNSName"] == f"{mine['givenName']}.{BASE_DOMAIN}."
        assert self_["Online"] is True
        assert st["CurrentTailnet"]["MagicDNSSuffix"] == BASE_DOMAIN
        assert st["User"][str(self_["UserID"])]["LoginName"].split("@")[0] == "alice"
        # ... and so is its one peer.
        peers = {p["HostName"]: p for p in st["Peer"].values()}
        assert set(peers) == {other.name}
        peer = peers[other.name]
        assert peer["TailscaleIPs"] == theirs["ipAddresses"]
        assert peer["PublicKey"] == theirs["nodeKey"]
        assert peer["DNSName"] == f"{theirs['givenName']}.{BASE_DOMAIN}."
        assert peer["UserID"] == self_["UserID"]
        assert peer["Online"] is True

    # `tailscale ip` prints the addresses meshscale assigned.
    assert a.cli("ip").stdout.split() == listed["alpha"]["ipAddresses"]

    # beta's daemon stops (no logout): meshscale marks it offline and tells alpha, whose status
    # says the same.
    b.stop()
    wait_for(lambda: server.nodes()["beta"]["online"] is False, 30, "beta offline in meshscale")
    wait_for(lambda: a.peers()["beta"]["Online"] is False, 30, "beta offline in alpha's status")
    assert server.nodes()["alpha"]["online"] is True
