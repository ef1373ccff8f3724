"""Node attributes from a policy's ``nodeAttrs`` reaching real tailscaled v1.102.5, in the netns.

``magicdns-aaaa`` is the one a user notices: without it (Tailscale's control plane does not give
it by default, and neither does meshscale) tailscaled's MagicDNS answers AAAA queries for peer
names with no records; with it, with the peer's IPv6 address. Changed live by ``policy set``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import BASE_DOMAIN, Tailscaled, answers, dns_query, start_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

ALLOW = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}
AAAA = {**ALLOW, "nodeAttrs": [{"target": ["*"], "attr": ["magicdns-aaaa"]}]}


def test_magicdns_aaaa_only_with_the_node_attribute(
        tmp_path: Path, tailscaled: Callable[..., Tailscaled]) -> None:
    server = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun", "policy"],
                              extra="policy:\n  mode: database\n")
    server.start()
    try:
        server.set_policy(ALLOW)
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "-u", "alice", "--reusable", "-o", "json")
        a, b = tailscaled("alpha"), tailscaled("beta")
        start_all([a, b])
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.up(server.url, key["key"]), [a, b]))
        v4, v6 = server.nodes()["beta"]["ip_addresses"]
        name = f"beta.{BASE_DOMAIN}"
        wait_for(lambda: answers(dns_query(a, name)) == [v4], 30, "beta's A record on alpha")

        # By default: no AAAA record for a peer (the name exists: no NXDOMAIN).
        none = dns_query(a, name, "AAAA")
        assert not none.get("Answers") and none["ResponseCode"] != "RCodeNameError", none
        assert "magicdns-aaaa" not in (a.status()["Self"].get("CapMap") or {})

        # nodeAttrs gives it, live: the peer's IPv6 address is answered.
        server.set_policy(AAAA)
        wait_for(lambda: answers(dns_query(a, name, "AAAA")) == [v6], 30, "beta's AAAA record")
        assert "magicdns-aaaa" in (a.status()["Self"].get("CapMap") or {})

        # And taken away again.
        server.set_policy(ALLOW)
        wait_for(lambda: not dns_query(a, name, "AAAA").get("Answers"), 30, "no AAAA again")
    finally:
        server.stop()
