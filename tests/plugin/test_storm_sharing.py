"""A storm's deltas under a restrictive policy: one message per visibility class, not per stream.

When 10,000 clients reconnect at once (a server restart), every node's coming online and new
endpoints reach its peers batched, one message per stream per flush. Under a restrictive policy
each stream used to get a message of its own (its list of patches lacked its own node), about
100 KB each at 10,000 nodes: 2.7 GB of peak RSS (docs/performance.md, "The restrictive
all-at-once storm"). Streams of one class (a user's devices under autogroup:self, a team's
servers) see the same nodes, so they must share one message: serialized and compressed once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from meshscale.mapper.frames import Message
from meshscale.mapper.session import MapSession
from meshscale.server import Server
from tests.plugin.netmap import NetMap
from tests.plugin.simnodes import join, quiet

pytestmark = pytest.mark.asyncio

SELF_ONLY = json.dumps({
    "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
})


async def test_a_storm_of_patches_is_one_message_per_class(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite", "policy"],
                                                    policy={"mode": "database"})
    state, mapper = server.state, server.mapper
    assert state is not None and mapper is not None
    server.set_policy(SELF_ONLY, "database", persist=True)
    owners: dict[int, str] = {}
    streams = {}
    maps = {}
    for name, hosts in (("alice", "abc"), ("bob", "abc"), ("carol", "a")):
        user = state.create_user(name, email=f"{name}@example.com")
        _, key = state.create_key(user, reusable=True)
        for host in hosts:
            _, stream, first = await join(server, key, f"{name}-{host}")
            assert stream is not None and first is not None
            node_id = first["Node"]["ID"]
            owners[node_id], streams[node_id] = name, stream
            maps[node_id] = NetMap()
            maps[node_id].apply(first)
    for node_id, stream in streams.items():
        for msg in await quiet(stream):
            maps[node_id].apply(msg)

    # Every node reports new endpoints in the same turn: one flush carries all seven patches.
    got: dict[int, list[Message]] = {i: [] for i in streams}

    def recording(s: MapSession) -> Callable[[Message], None]:
        push = s.push

        def record(msg: Message) -> None:
            got[s.node_id].append(msg)
            push(msg)
        return record

    for s in mapper.sessions.values():
        s.push = recording(s)  # type: ignore[method-assign]
    for node_id in streams:
        state.client_update(state.nodes[node_id], (f"127.0.0.1:{40000 + node_id}",), None, None)
    mapper.flush()

    # Carol's one device sees no peer: it gets nothing, not a message of its own patch only.
    assert [len(got[i]) for i in streams] == [1] * 6 + [0], got
    by_owner: dict[str, set[int]] = {}
    for node_id, msgs in got.items():
        by_owner.setdefault(owners[node_id], set()).update(map(id, msgs))
    # Each user's three devices hold one shared message; the two users' messages differ.
    assert {owner: len(ids) for owner, ids in by_owner.items()} == {
        "alice": 1, "bob": 1, "carol": 0}
    assert by_owner["alice"] != by_owner["bob"]

    # What the clients hold: each device has its own user's other devices' new endpoints and
    # nothing of the other user's (a patch for its own ID, which it holds no peer of, is
    # ignored by the client).
    for node_id, stream in streams.items():
        for msg in await quiet(stream):
            maps[node_id].apply(msg)
        peers = maps[node_id].peers
        assert sorted(peers) == sorted(i for i in streams
                                       if owners[i] == owners[node_id] and i != node_id)
        for peer_id, peer in peers.items():
            assert peer["Endpoints"] == [f"127.0.0.1:{40000 + peer_id}"]
