"""Per-class visibility bitsets equal the per-node answers, and a policy change names every node
whose outputs it changes (plugins/policy/views.py)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from meshscale.bench.tailnets import restrictive_policy, role, user_name, users_for
from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policy import PolicyNode, PolicyUser

NODES = 120


def engine(policy: dict[str, Any]) -> TailscalePolicyEngine:
    e = TailscalePolicyEngine()
    users = [PolicyUser(u + 1, user_name(u)) for u in range(users_for(NODES))]
    nodes = []
    for i in range(NODES):
        r = role(i)
        nodes.append(PolicyNode(
            id=i + 1, hostname=f"n{i}", user_id=None if r.server else r.user + 1,
            tags=frozenset({r.tag}) if r.server else frozenset(),
            ipv4=f"100.64.{i // 250}.{i % 250 + 1}", ipv6=f"fd7a:115c:a1e0::{i + 1:x}"))
    e.set_topology(users, nodes)
    e.set_policy(json.dumps(policy))
    return e


def outputs(e: TailscalePolicyEngine, i: int) -> tuple[Any, ...]:
    peers = e.visible_peers(i)
    return (e.packet_filter(i), None if peers is None else sorted(peers), e.ssh_policy(i),
            dict(e.cap_map(i)))


def test_class_bitsets_equal_per_node_peers() -> None:
    e = engine(restrictive_policy(NODES))
    for i in range(1, NODES + 1):
        bits = e.visible_peer_bits(i)
        assert bits is not None
        assert [p for p in e.node_slots.ids(bits) if p != i] == sorted(e.visible_peers(i) or ())
    # Nodes alike share one int.
    assert e.visible_peer_bits(2) is e.visible_peer_bits(2 + 2 * 8)


@pytest.mark.parametrize("edit", ["cut", "reorder", "groups", "ssh"])
def test_policy_change_names_every_node_it_changes(edit: str) -> None:
    before = restrictive_policy(NODES)
    after = restrictive_policy(NODES, cut=True)
    if edit == "reorder":
        after = dict(before, acls=list(reversed(before["acls"])))
    elif edit == "groups":
        groups = dict(before["groups"])
        groups["group:team1"] = [*groups["group:team1"], groups["group:team2"][0]]
        after = dict(before, groups=groups)
    elif edit == "ssh":
        after = dict(before, ssh=[])
    e = engine(before)
    old = {i: outputs(e, i) for i in range(1, NODES + 1)}
    affected = e.set_policy(json.dumps(after))
    # Members and SSH caches carried over from the old compilation give what a fresh one does.
    fresh = engine(after)
    assert all(outputs(e, i) == outputs(fresh, i) for i in range(1, NODES + 1))
    # The filter's JSON from shared parts is byte for byte a fresh compilation's.
    assert all(e.packet_filter_json(i) == fresh.packet_filter_json(i)
               for i in range(1, NODES + 1))
    changed = {i for i in range(1, NODES + 1) if outputs(e, i) != old[i]}
    assert changed, "the edit changes something"
    assert affected.everyone or changed <= affected.nodes
    if edit == "cut":
        # Only team 0's users and servers: a narrow change stays narrow.
        assert not affected.everyone and affected.nodes == changed


def src_lists(e: TailscalePolicyEngine, i: int) -> list[list[str]]:
    return [r["SrcIPs"] for r in e.packet_filter(i)]


def test_filter_json_is_the_rules_json_and_its_digest_follows_it() -> None:
    e = engine(restrictive_policy(NODES))
    digests: dict[bytes, bytes] = {}
    for i in range(1, NODES + 1):
        data, dig = e.packet_filter_json(i)
        assert data == orjson.dumps(e.packet_filter(i))
        assert digests.setdefault(data, dig) == dig
    assert len(set(digests.values())) == len(digests) > 10  # different filters, different


def test_nodes_of_one_class_share_src_lists_and_a_moved_node_gets_the_new_one() -> None:
    e = engine(restrictive_policy(NODES))
    # Nodes 2 and 18 are team 0's servers (tailnets.role).
    a, b = 2, 2 + 2 * 8
    assert role(a - 1).server and role(a - 1).team == role(b - 1).team
    la, lb = src_lists(e, a), src_lists(e, b)
    assert la == lb and all(x is y for x, y in zip(la, lb, strict=True))
    # A user's devices share their autogroup:self sources.
    user_nodes = [i for i in range(1, NODES + 1) if not role(i - 1).server
                  and role(i - 1).user == role(3 - 1).user]
    assert len(user_nodes) > 1
    first, *rest = (src_lists(e, i) for i in user_nodes)
    assert all(x[0] is first[0] for x in rest)
    # Node b moves to another team: it gets that team's list; a's list is rebuilt without b.
    other = next(i for i in range(1, NODES + 1) if role(i - 1).server
                 and role(i - 1).team != role(a - 1).team)
    old_a = src_lists(e, a)
    e.upsert_node(PolicyNode(id=b, hostname="moved", user_id=None,
                             tags=frozenset({role(other - 1).tag}),
                             ipv4=f"100.64.0.{b}", ipv6=f"fd7a:115c:a1e0::{b:x}"))
    assert all(x is y for x, y in zip(src_lists(e, b), src_lists(e, other), strict=True))
    assert src_lists(e, a)[-1] != old_a[-1] and src_lists(e, a)[-1] is not old_a[-1]
    assert f"100.64.0.{b}" not in src_lists(e, a)[-1]
    assert f"100.64.0.{b}" in src_lists(e, other)[-1]
    for i in (a, b, other):
        assert e.packet_filter_json(i)[0] == orjson.dumps(e.packet_filter(i))


def test_a_grant_the_change_leaves_alone_keeps_its_rendered_sources() -> None:
    e = engine(restrictive_policy(NODES))
    team1_server = 4
    assert role(team1_server - 1).server and role(team1_server - 1).team == 1
    before = src_lists(e, team1_server)
    e.set_policy(json.dumps(restrictive_policy(NODES, cut=True)))  # cuts team 0 only
    after = src_lists(e, team1_server)
    assert all(x is y for x, y in zip(before, after, strict=True))
