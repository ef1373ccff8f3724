"""The real Tailscale client against meshscale: tailscaled and the tailscale CLI, v1.102.5.

What users run on laptops and servers, built from its Go module by scripts/build-tailscale and
started per node by the ``tailscaled`` fixture (userspace networking, inside the test's network
namespace). Everything is checked through the client's own CLI and meshscale's own CLI. Joining,
routes and exit nodes, and logout also run against the oldest release meshscale accepts
(``OLD_VERSION``, v1.80.3).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend
from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import (
    BASE_DOMAIN,
    OLD_VERSION,
    VERSION,
    Tailscaled,
    answers,
    both_versions,
    dns_query,
    get_via_proxy,
    http_service,
    received_from,
    start_all,
    up_all,
)

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

Make = Callable[..., Tailscaled]


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MeshscaleProcess]:
    """meshscale with SQLite (or, for a test that asks for ``backend``, each storage backend),
    the embedded DERP relay and STUN, and a user alice."""
    backend = (request.getfixturevalue("backend") if "backend" in request.fixturenames
               else Backend("sqlite", {"type": "sqlite"}))
    srv = MeshscaleProcess(tmp_path, [backend.name, "derp", "stun"], backend.yaml())
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


@pytest.mark.parametrize(("backend", "tailscale_version"), [
    ("sqlite", VERSION), ("postgres", VERSION), ("sqlite", OLD_VERSION)], indirect=True)
def test_join_with_preauth_key_and_status_matches_meshscale(
        backend: Backend, server: MeshscaleProcess, tailscaled: Make) -> None:
    # On both storage backends (this test restarts the server, below), and with the old client
    # on one.
    a, b = join(server, tailscaled, "alpha", "beta")
    listed = wait_for(lambda: (n := server.nodes()) and all(x["online"] for x in n.values())
                      and len(n) == 2 and n, 30, "both nodes online in meshscale")

    for me, other in ((a, b), (b, a)):
        st = me.status()
        assert st["BackendState"] == "Running", st["BackendState"]
        assert st["Version"].startswith(me.version.removeprefix("v")), st["Version"]
        mine, theirs = listed[me.name], listed[other.name]
        self_ = st["Self"]
        # The client's view of itself is meshscale's record of it.
        assert self_["TailscaleIPs"] == mine["ip_addresses"]
        assert self_["PublicKey"] == mine["node_key"]
        assert self_["HostName"] == me.name
        assert self_["DNSName"] == f"{mine['given_name']}.{BASE_DOMAIN}."
        assert self_["Online"] is True
        assert st["CurrentTailnet"]["MagicDNSSuffix"] == BASE_DOMAIN
        assert st["User"][str(self_["UserID"])]["LoginName"].split("@")[0] == "alice"
        # ... and so is its one peer.
        peers = {p["HostName"]: p for p in st["Peer"].values()}
        assert set(peers) == {other.name}
        peer = peers[other.name]
        assert peer["TailscaleIPs"] == theirs["ip_addresses"]
        assert peer["PublicKey"] == theirs["node_key"]
        assert peer["DNSName"] == f"{theirs['given_name']}.{BASE_DOMAIN}."
        assert peer["UserID"] == self_["UserID"]
        assert peer["Online"] is True

    # `tailscale ip` prints the addresses meshscale assigned.
    assert a.cli("ip").stdout.split() == listed["alpha"]["ip_addresses"]

    # beta's daemon stops (no logout): meshscale marks it offline and tells alpha, whose status
    # says the same.
    b.stop()
    wait_for(lambda: server.nodes()["beta"]["online"] is False, 30, "beta offline in meshscale")
    wait_for(lambda: a.peers()["beta"]["Online"] is False, 30, "beta offline in alpha's status")
    assert server.nodes()["alpha"]["online"] is True

    # Restarted, it comes back by itself from its state (same node, no key), online for both.
    b.start()
    wait_for(lambda: b.status()["BackendState"] == "Running", 30, "beta running again")
    wait_for(lambda: a.peers()["beta"]["Online"] is True, 30, "beta online in alpha's status")
    again = server.nodes()
    assert again["beta"]["id"] == listed["beta"]["id"] and again["beta"]["online"] is True
    assert len(again) == 2

    # A server restart loses nothing: both daemons reconnect by themselves, same nodes.
    server.stop()
    server.start()
    wait_for(lambda: all(n["online"] for n in server.nodes().values()), 60,
             "both nodes back online after a server restart")
    assert {k: v["ip_addresses"] for k, v in server.nodes().items()} == {
        k: v["ip_addresses"] for k, v in listed.items()}
    wait_for(lambda: a.peers()["beta"]["Online"] is True, 30, "beta online for alpha again")
    assert "pong from beta" in a.cli("ping", "--until-direct=false", "-c", "2", "beta").stdout

    # Deleted in meshscale: alpha drops it from its netmap.
    server.cli("nodes", "delete", "--force", "-i", str(listed["beta"]["id"]))
    wait_for(lambda: "beta" not in a.peers(), 30, "beta gone from alpha's status")


def test_ping_direct_and_through_meshscale_derp(server: MeshscaleProcess, tailscaled: Make) -> None:
    """alpha and beta find a direct UDP path (meshscale's STUN); gamma never leaves DERP
    (``TS_DEBUG_ALWAYS_USE_DERP``), so pings to it cross meshscale's embedded relay."""
    a, b = tailscaled("alpha"), tailscaled("beta")
    c = tailscaled("gamma", env={"TS_DEBUG_ALWAYS_USE_DERP": "1"})
    start_all([a, b, c])
    up_all([a, b, c], server.url, authkey(server, "--reusable"))
    listed = server.nodes()
    b_ip, c_ip = listed["beta"]["ip_addresses"][0], listed["gamma"]["ip_addresses"][0]

    # Direct: `tailscale ping` stops at the first pong over a direct path, and names it: beta's
    # own UDP port (--port), on an address of this namespace.
    out = a.cli("ping", "-c", "20", b_ip).stdout
    direct = re.search(rf"pong from beta \({re.escape(b_ip)}\b.*\) via "
                       r"(127\.0\.0\.1|10\.99\.0\.1):(\d+) in ", out)
    assert direct is not None, out
    assert int(direct.group(2)) == b.port, out
    assert a.peers()["beta"]["CurAddr"].endswith(f":{b.port}")

    # Through DERP: every pong comes back via the embedded region (RegionCode "meshscale"),
    # and the server log shows it relaying between the two node keys.
    out = a.cli("ping", "--until-direct=false", "-c", "3", c_ip).stdout
    pongs = re.findall(r"pong from gamma .* via (\S+) in ", out)
    assert pongs and set(pongs) == {"DERP(meshscale)"}, out
    peer = a.peers()["gamma"]
    assert peer["Relay"] == "meshscale" and peer["CurAddr"] == "", peer
    a_hex = listed["alpha"]["node_key"].removeprefix("nodekey:")
    c_hex = listed["gamma"]["node_key"].removeprefix("nodekey:")
    log = server.log.read_text(errors="replace")
    assert re.search(rf"derp: relaying packets from {c_hex[:16]} to <derp conn \d+ {a_hex[:8]} ",
                     log), "no relaying gamma -> alpha in the server log"


def test_magicdns_names_through_the_clients_resolver(server: MeshscaleProcess,
                                                     tailscaled: Make) -> None:
    a, b = join(server, tailscaled, "alpha", "beta")
    listed = server.nodes()
    v4 = listed["beta"]["ip_addresses"][0]

    # The client's resolver answers MagicDNS names from the netmap meshscale sent.
    assert answers(dns_query(a, f"beta.{BASE_DOMAIN}")) == [v4]
    # (AAAA answers for peers need the node attribute "magicdns-aaaa", which, as in Tailscale's
    # control plane, only a policy's nodeAttrs gives: test_tailscaled_nodeattrs.py.)
    assert answers(dns_query(b, f"alpha.{BASE_DOMAIN}")) == [listed["alpha"]["ip_addresses"][0]]
    missing = dns_query(a, f"nosuchnode.{BASE_DOMAIN}")
    assert missing["ResponseCode"] == "RCodeNameError" and not missing.get("Answers"), missing

    # A rename in meshscale reaches the client's resolver on its open stream.
    server.cli("nodes", "rename", "-i", str(listed["beta"]["id"]), "db")
    wait_for(lambda: answers(dns_query(a, f"db.{BASE_DOMAIN}")) == [v4], 30,
             "the new name to resolve on alpha")
    assert dns_query(a, f"beta.{BASE_DOMAIN}")["ResponseCode"] == "RCodeNameError"
    # And `tailscale ping db` (the CLI finds short names in the netmap) reaches the node.
    assert f"pong from db ({v4}" in a.cli("ping", "--until-direct=false", "-c", "2", "db").stdout


@contextmanager
def local_route(prefix: str) -> Iterator[None]:
    """Make ``prefix`` deliverable on this namespace's lo without being any interface's address.

    An exit node refuses to forward to its own host addresses and LANs (the client shrinks the
    0.0.0.0/0 it serves around them, "guest wifi" style), and in one namespace every interface
    address belongs to every node. A ``local`` route gives a destination that is neither.
    """
    subprocess.run(["ip", "route", "add", "local", prefix, "dev", "lo"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", "local", prefix, "dev", "lo"], check=False)


@both_versions
def test_subnet_route_and_exit_node(server: MeshscaleProcess, tailscaled: Make) -> None:
    """router advertises 10.99.0.0/24 and exit offers itself as an exit node; meshscale's CLI
    approves both; laptop reaches a service on 10.99.0.1 through the subnet route, and one on
    198.18.0.7 through the exit node. The WireGuard byte counters in laptop's status say which
    peer carried the traffic."""
    laptop = tailscaled("laptop", http_proxy=True)
    router, exit_ = tailscaled("router"), tailscaled("exit")
    start_all([laptop, router, exit_])
    up_all([laptop, router, exit_], server.url, authkey(server, "--reusable"))
    router.cli("set", "--advertise-routes=10.99.0.0/24")
    exit_.cli("set", "--advertise-exit-node")
    ids = {name: n["id"] for name, n in server.nodes().items()}
    wait_for(lambda: server.nodes()["router"]["available_routes"] == ["10.99.0.0/24"], 30,
             "router's advertised route in meshscale")
    wait_for(lambda: sorted(server.nodes()["exit"]["available_routes"]) == ["0.0.0.0/0", "::/0"],
             30, "exit's advertised exit routes in meshscale")
    # Advertised is not approved: nothing is offered to laptop yet.
    peers = laptop.peers()
    assert not peers["router"].get("PrimaryRoutes") and not peers["exit"]["ExitNodeOption"]

    server.cli("nodes", "approve-routes", "-i", str(ids["router"]), "-r", "10.99.0.0/24")
    server.cli("nodes", "approve-routes", "-i", str(ids["exit"]), "-r", "0.0.0.0/0,::/0")
    wait_for(lambda: laptop.peers()["router"].get("PrimaryRoutes") == ["10.99.0.0/24"], 30,
             "the approved subnet route in laptop's status")
    wait_for(lambda: laptop.peers()["exit"]["ExitNodeOption"], 30,
             "exit offered as an exit node to laptop")
    exit_ip = server.nodes()["exit"]["ip_addresses"][0]
    assert exit_ip in laptop.cli("exit-node", "list").stdout

    body = os.urandom(1 << 20)
    big = len(body)

    def fetch_counting(url: str) -> dict[str, int]:
        before = received_from(laptop)
        # Each try has its own short deadline, inside wait_for's: with v1.80 on either end, a
        # connection just after a route or exit-node change can stall until its timeout while
        # the next one goes straight through (seen with a correct netmap on both nodes).
        assert get_via_proxy(laptop, url, timeout=8) == body
        after = received_from(laptop)
        return {name: after[name] - before.get(name, 0) for name in after}

    with (http_service("10.99.0.1", body) as lan_port, local_route("198.18.0.0/24"),
          http_service("198.18.0.7", body) as far_port):
        lan, far = f"http://10.99.0.1:{lan_port}/", f"http://198.18.0.7:{far_port}/"
        # Routes not accepted, no exit node: tailscaled dials both itself, no peer carries them.
        for url in (lan, far):
            moved = fetch_counting(url)
            assert moved["router"] < big / 10 and moved["exit"] < big / 10, moved

        # --accept-routes: 10.99.0.0/24 goes through router.
        laptop.cli("set", "--accept-routes")
        moved = wait_for(lambda: (m := fetch_counting(lan))["router"] >= big and m, 30,
                         "the service's response to arrive through router")
        assert moved["exit"] < big / 10, moved

        # --exit-node: everything else goes through exit.
        laptop.cli("set", f"--exit-node={exit_ip}")
        st = laptop.status()
        assert st["ExitNodeStatus"]["TailscaleIPs"][0].startswith(exit_ip), st["ExitNodeStatus"]
        assert laptop.peers()["exit"]["ExitNode"] is True
        moved = wait_for(lambda: (m := fetch_counting(far))["exit"] >= big and m, 30,
                         "the far service's response to arrive through the exit node")
        assert moved["router"] < big / 10, moved
        # The more specific subnet route still wins for 10.99.0.0/24. (Not asserted with
        # v1.80.3: there this fetch stalled for the whole 30 s in one run of five, on a loaded
        # machine, with both routes correct in its netmap; docs/clients.md, Gaps.)
        if laptop.version != OLD_VERSION:
            moved = wait_for(lambda: (m := fetch_counting(lan))["router"] >= big and m, 30,
                             "the service's response through router with an exit node set")
            assert moved["exit"] < big / 10, moved


def unreachable(src: Tailscaled, ip: str) -> bool:
    """``tailscale ping`` (disco, then through DERP) gets no answer from ``ip``."""
    out = src.cli("ping", "--until-direct=false", "-c", "2", "--timeout=1s", ip, check=False)
    return out.returncode != 0 and "pong" not in out.stdout


def needs_login(node: Tailscaled) -> bool:
    return bool(node.status()["BackendState"] == "NeedsLogin")


def cut_off(server: MeshscaleProcess, tailscaled: Make) -> tuple[Tailscaled, ...]:
    """alpha, beta and gamma join and reach each other; then beta logs out (`tailscale logout`)
    and the admin expires gamma's key (`meshscale nodes expire`)."""
    a, b, c = join(server, tailscaled, "alpha", "beta", "gamma")
    listed = server.nodes()
    for name in ("beta", "gamma"):
        assert "pong from" in a.cli("ping", "--until-direct=false", "-c", "2",
                                    listed[name]["ip_addresses"][0]).stdout
    b.cli("logout")
    server.cli("nodes", "expire", "-i", str(listed["gamma"]["id"]))
    # meshscale: both expired (a logout expires the node, as Tailscale's control plane does).
    wait_for(lambda: (n := server.nodes()) and n["beta"]["expired"] and n["gamma"]["expired"],
             30, "beta and gamma expired in meshscale")
    for node in (b, c):
        wait_for(partial(needs_login, node), 30, f"{node.name} to need a login")
    return a, b, c


@both_versions
def test_logout_and_expiry_cut_the_node_off(server: MeshscaleProcess, tailscaled: Make) -> None:
    a, b, c = cut_off(server, tailscaled)
    listed = server.nodes()
    ip = {name: n["ip_addresses"][0] for name, n in listed.items()}
    # alpha no longer offers them a path: pings go unanswered, both ways.
    for name in ("beta", "gamma"):
        wait_for(partial(unreachable, a, ip[name]), 30, f"{name} cut off from alpha")
    assert unreachable(c, ip["alpha"])
    # A logged-out client has no node key, hence no map and no peers.
    assert not b.status().get("Peer")
    # Logging in again with a new key brings beta back (a new node: its old key was logged out).
    # v1.80.3's CLI sometimes refuses a plain `up` after logout, naming --accept-routes (never
    # set on this node) as a setting to repeat, and says to add --reset: as a user would, it does.
    b.up(server.url, authkey(server), *(["--reset"] if b.version == OLD_VERSION else []))
    wait_for(lambda: "pong from" in a.cli("ping", "--until-direct=false", "-c", "1",
                                          b.status()["Self"]["TailscaleIPs"][0],
                                          check=False).stdout, 30, "beta back after login")


def test_expired_node_gets_no_peers_and_its_updates_are_refused(
        server: MeshscaleProcess, tailscaled: Make) -> None:
    _, _, c = cut_off(server, tailscaled)
    # What Tailscale's control plane gives an expired node: a map that says so, no peers.
    wait_for(lambda: not c.status().get("Peer"), 10, "gamma's peers to go")
    # And its updates are refused: gamma's new route never reaches meshscale.
    c.cli("set", "--advertise-routes=10.99.0.0/24")
    deadline = time.monotonic() + 5  # a live node's update arrives well within this
    while time.monotonic() < deadline:
        assert server.nodes()["gamma"]["available_routes"] == [], "expired gamma updated its routes"
        time.sleep(0.5)
