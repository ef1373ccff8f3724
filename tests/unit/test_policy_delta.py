"""A policy change's deltas share what streams have in common (core/mapper/policydelta.py), and
each stream still ends up holding exactly what a fresh full map gives."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from meshscale.bench.tailnets import restrictive_policy, role, user_name, users_for
from meshscale.mapper.session import MapSession
from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.testing import make_config

NODES = 96


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    host = PluginHost()
    host.load(["sqlite", "policy"])
    cfg = make_config(tmp_path, host, plugins=["sqlite", "policy"],
                      policy={"mode": "database"}, log={"level": "warn"})
    srv = Server(cfg, host)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def fleet(srv: Server) -> dict[int, MapSession]:
    state, mapper = srv.state, srv.mapper
    assert state is not None and mapper is not None
    users = {u: state.create_user(user_name(u)) for u in range(users_for(NODES))}
    for i in range(NODES):
        r = role(i)
        tags = [r.tag] if r.server else []
        state.register_for_user(None if tags else users[r.user].id, os.urandom(32),
                                os.urandom(32), {"Hostname": f"n{i}"}, tags, 106, "cli")
    srv.set_policy(json.dumps(restrictive_policy(NODES)), "test", persist=False)
    mapper.flush()
    sessions = {}
    for node_id in sorted(state.nodes):
        s = mapper.open(node_id, True)
        mapper.full_map(s)
        s.needs_full = False
        sessions[node_id] = s
    return sessions


def held(srv: Server, s: MapSession) -> dict[str, Any]:
    """What a stream's client holds that policy decides: peers, filter, SSH policy."""
    assert srv.mapper is not None
    return {"peers": s.known_ids(), "filter": s.filter_digest, "ssh": s.ssh_digest}


async def test_streams_alike_share_one_delta_and_hold_what_a_fresh_map_gives(
        server: Server) -> None:
    sessions = fleet(server)
    mapper = server.mapper
    assert mapper is not None
    server.set_policy(json.dumps(restrictive_policy(NODES, cut=True)), "test", persist=False)
    mapper.flush()
    team0_users = [i for i in sessions if not role(i - 1).server and role(i - 1).team == 0]
    team0_servers = [i for i in sessions if role(i - 1).server and role(i - 1).team == 0]
    assert len(team0_users) > 3
    msgs = [sessions[i].queue[-1] for i in team0_users]
    # Every user of team 0 loses the same servers: one message object, serialized once.
    assert all(m is msgs[0] for m in msgs)
    assert json.loads(msgs[0].body) == {"PeersRemoved": team0_servers}
    # Servers get their own filters (their own addresses in DstPorts): no shared message.
    server_msgs = [sessions[i].queue[-1] for i in team0_servers]
    assert len({id(m) for m in server_msgs}) == len(server_msgs)
    for m in server_msgs:
        assert set(json.loads(m.body)) == {"PacketFilter", "PeersRemoved"}
    # Each stream holds what a new stream opened now is given.
    for node_id, s in sessions.items():
        fresh = MapSession(node_id, True)
        mapper.full_map(fresh)
        assert held(server, s) == held(server, fresh), node_id
    # Streams hold their new class's shared int, not a copy.
    for node_id in team0_users + team0_servers:
        assert sessions[node_id].known is mapper.visible_bits(node_id)


async def test_a_restricted_nodes_patch_is_one_message_for_all_its_viewers(
        server: Server) -> None:
    sessions = fleet(server)
    state, mapper = server.state, server.mapper
    assert state is not None and mapper is not None
    sender = next(i for i in sessions if role(i - 1).server and role(i - 1).team == 0)
    viewers = [i for i in sessions if i != sender and sender in sessions[i].known_ids()]
    assert len(viewers) > 3  # the team's users' devices and its other servers
    for i in viewers:
        sessions[i].queue.clear()
    state.client_update(state.nodes[sender], ("127.0.0.1:4242",), None, None)
    mapper.flush()
    msgs = [sessions[i].queue[-1] for i in viewers]
    # The same news for every viewer: one message object, serialized and compressed once.
    assert all(m is msgs[0] for m in msgs)
    patch = json.loads(msgs[0].body)["PeersChangedPatch"]
    assert [p["NodeID"] for p in patch] == [sender]
    assert patch[0]["Endpoints"] == ["127.0.0.1:4242"]
    assert not any(sessions[i].queue for i in sessions if i not in viewers and i != sender)


async def test_churn_reuses_bit_positions_and_streams_stay_right(server: Server) -> None:
    sessions = fleet(server)
    state, mapper = server.state, server.mapper
    assert state is not None and mapper is not None
    users = {u.name: u for u in state.users.values()}
    for round_ in range(4):
        # A third of the fleet leaves and as many new nodes join (new, higher IDs).
        for node_id in sorted(sessions)[::3]:
            state.delete_node(node_id)
            del sessions[node_id]
        mapper.flush()
        for i in range(NODES // 3):
            r = role(i)
            tags = [r.tag] if r.server else []
            node = state.register_for_user(
                None if tags else users[user_name(r.user)].id, os.urandom(32),
                os.urandom(32), {"Hostname": f"r{round_}-{i}"}, tags, 106, "cli")
            mapper.flush()
            s = mapper.open(node.id, True)
            mapper.full_map(s)
            s.needs_full = False
            sessions[node.id] = s
        mapper.flush()
    assert max(sessions) > 2 * NODES  # IDs far past the live count...
    widest = max((s.known or 0).bit_length() for s in sessions.values())
    assert widest <= len(state.nodes) + 1  # ...but the ints as wide as the live nodes
    for node_id, s in sessions.items():
        fresh = MapSession(node_id, True)
        mapper.full_map(fresh)
        assert held(server, s) == held(server, fresh), node_id


def test_a_delta_body_is_what_orjson_gives_with_json_spliced_in() -> None:
    from meshscale.mapper.policydelta import _body

    rules = [{"SrcIPs": ["100.64.0.1"], "DstPorts": [{"IP": "*", "Ports": {"First": 0,
                                                                          "Last": 65535}}]}]
    out = {"PacketFilter": orjson.dumps(rules), "SSHPolicy": b'{"rules":[]}',
           "PeersRemoved": [3, 5], "Node": {"ID": 7, "Name": "n\u00e9"}}
    assert _body(out) == orjson.dumps({**out, "PacketFilter": rules,
                                       "SSHPolicy": {"rules": []}})
    assert _body({"PeersRemoved": [1]}) == b'{"PeersRemoved":[1]}'
