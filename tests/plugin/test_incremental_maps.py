"""Incremental maps equal a fresh computation: named regressions found by the oracle
(tests/plugin/test_oracle.py) or reported, each replayed on a live server with streaming
simulated nodes and checked both by its symptom and against what a fresh server sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from meshscale.errors import NotFoundError
from meshscale.server import Server
from tests.plugin.oracle import Fleet

pytestmark = pytest.mark.asyncio

# Issue 21's policy: everyone reaches everyone; alice may SSH (check) into her own nodes.
ISSUE_21 = json.dumps({
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    "ssh": [{"action": "check", "src": ["alice@"], "dst": ["alice@"],
             "users": ["root", "autogroup:nonroot"], "checkPeriod": "12h"}],
})


@pytest.fixture
async def dbserver(meshscale_server_factory: Callable[..., Any]) -> Server:
    srv: Server = await meshscale_server_factory(plugins=["sqlite", "policy"],
                                                 policy={"mode": "database"})
    return srv


@pytest.fixture
async def fleet(dbserver: Server) -> AsyncIterator[Fleet]:
    f = Fleet(dbserver)
    yield f
    await f.close()


def user_key(server: Server, name: str, **kw: Any) -> str:
    assert server.state is not None
    try:
        user = server.state.user(name)
    except NotFoundError:
        user = server.state.create_user(name, email=f"{name}@example.com")
    return server.state.create_key(user, reusable=True, **kw)[1]


def principals(netmap_ssh: Any) -> list[set[str]]:
    return [{p["nodeIP"] for p in rule["principals"]} for rule in netmap_ssh["rules"]]


async def test_issue_21_ssh_principals_follow_a_joining_node(dbserver: Server,
                                                             fleet: Fleet) -> None:
    key = user_key(dbserver, "alice")
    dbserver.set_policy(ISSUE_21, "database", persist=True)
    alpha = await fleet.join(key, "alpha")
    assert principals(fleet.maps[alpha].ssh) == [{"100.64.0.1", "fd7a:115c:a1e0::1"}]
    bravo = await fleet.join(key, "bravo")
    await fleet.settle()
    both = {"100.64.0.1", "fd7a:115c:a1e0::1", "100.64.0.2", "fd7a:115c:a1e0::2"}
    # bravo's own first map, and the delta alpha's open stream received.
    assert principals(fleet.maps[bravo].ssh) == [both]
    assert principals(fleet.maps[alpha].ssh) == [both]
    # A new stream of alpha gets the same.
    await fleet.open(alpha)
    assert principals(fleet.maps[alpha].ssh) == [both]
    await fleet.assert_matches_fresh()


async def test_retagged_node_gets_its_new_owner_profile(dbserver: Server, fleet: Fleet) -> None:
    """Found by the oracle: an expired node logging in again (same node key, stream kept) with
    a tagged key got a new self Node owned by "tagged-devices" but no UserProfile for that
    owner (a fresh map has it)."""
    assert dbserver.lifecycle is not None
    key = user_key(dbserver, "alice")
    tagged = user_key(dbserver, "alice", tags=["tag:server"])
    node = await fleet.join(key, "laptop")
    dbserver.lifecycle.expire(node)
    await fleet.reregister(node, tagged, rotate=False)
    await fleet.settle()
    netmap = fleet.maps[node]
    assert netmap.node is not None and netmap.node["Tags"] == ["tag:server"]
    assert netmap.profiles[netmap.node["User"]]["LoginName"] == "tagged-devices"
    await fleet.assert_matches_fresh()


async def test_full_map_mid_stream_without_peers_clears_held_peers(dbserver: Server,
                                                                   fleet: Fleet) -> None:
    """Found by the oracle: a node cut off by expiry gets a new full map on its open stream
    with no peers. Clients take an empty ``Peers`` as "unchanged" (controlclient), so it kept
    every peer it held; the map now removes them by ID."""
    assert dbserver.lifecycle is not None
    key = user_key(dbserver, "alice")
    a = await fleet.join(key, "a")
    b = await fleet.join(key, "b")
    await fleet.settle()
    assert set(fleet.maps[a].peers) == {b}
    dbserver.lifecycle.expire(a)
    await fleet.settle()
    assert fleet.maps[a].peers == {}
    assert fleet.maps[a].packet_filter == []
    await fleet.assert_matches_fresh()
