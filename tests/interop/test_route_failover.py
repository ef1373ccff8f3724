"""Issue 11, item 6, with the real client (tailscaled v1.102.5): a subnet route fails over.

Two routers advertise 10.99.0.0/24 and both are approved; laptop reaches a service on
10.99.0.1 through the primary (the lower ID). When the primary's tailscaled stops, meshscale
elects the other, online router, laptop's netmap moves the route to it, and the traffic
follows. (Before, the primary was the lowest ID whether or not it was online, so the route
kept pointing at the dead router.) WireGuard byte counters in laptop's status say which peer
carried the response.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import (
    Tailscaled,
    get_via_proxy,
    http_service,
    received_from,
    start_all,
    up_all,
)
from tests.interop.test_tailscaled import authkey, server

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]
__all__ = ["server"]  # the fixture, shared with test_tailscaled

ROUTE = "10.99.0.0/24"


def test_subnet_route_fails_over_to_the_online_router(
        server: MeshscaleProcess, tailscaled: Callable[..., Tailscaled]) -> None:
    laptop = tailscaled("laptop", http_proxy=True)
    r1, r2 = tailscaled("r1"), tailscaled("r2")
    start_all([laptop])
    up_all([laptop], server.url, authkey(server, "--reusable"))
    start_all([r1])
    up_all([r1], server.url, authkey(server))  # r1 first: the lower ID
    start_all([r2])
    up_all([r2], server.url, authkey(server))
    for r in (r1, r2):
        r.cli("set", f"--advertise-routes={ROUTE}")
    wait_for(lambda: all(server.nodes()[n]["available_routes"] == [ROUTE] for n in ("r1", "r2")),
             30, "both routers' advertised route in meshscale")
    ids = {name: n["id"] for name, n in server.nodes().items()}
    assert ids["r1"] < ids["r2"]
    for name in ("r1", "r2"):
        server.cli("nodes", "approve-routes", "-i", str(ids[name]), "-r", ROUTE)
    wait_for(lambda: laptop.peers()["r1"].get("PrimaryRoutes") == [ROUTE], 30,
             "r1 as the route's primary in laptop's status")
    assert not laptop.peers()["r2"].get("PrimaryRoutes")
    laptop.cli("set", "--accept-routes")

    body = os.urandom(1 << 20)
    big = len(body)

    def carried_by(url: str) -> dict[str, int]:
        before = received_from(laptop)
        assert get_via_proxy(laptop, url) == body
        after = received_from(laptop)
        return {name: after[name] - before.get(name, 0) for name in after}

    with http_service("10.99.0.1", body) as port:
        url = f"http://10.99.0.1:{port}/"
        wait_for(lambda: carried_by(url)["r1"] >= big, 30, "the response through r1")

        r1.stop()  # the primary goes away: its map stream ends
        wait_for(lambda: not server.nodes()["r1"]["online"], 30, "r1 offline in meshscale")
        wait_for(lambda: laptop.peers()["r2"].get("PrimaryRoutes") == [ROUTE], 30,
                 "the route moved to r2 in laptop's status")
        assert not laptop.peers()["r1"].get("PrimaryRoutes")
        moved = wait_for(lambda: (m := carried_by(url))["r2"] >= big and m, 45,
                         "the response through r2 after failover")
        assert moved.get("r1", 0) < big / 10, moved
