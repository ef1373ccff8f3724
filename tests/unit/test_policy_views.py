"""Per-class visibility bitsets equal the per-node answers, and a policy change names every node
whose outputs it changes (plugins/policy/views.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshscale import bitset
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
        assert [p for p in bitset.members(bits) if p != i] == sorted(e.visible_peers(i) or ())
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
    changed = {i for i in range(1, NODES + 1) if outputs(e, i) != old[i]}
    assert changed, "the edit changes something"
    assert affected.everyone or changed <= affected.nodes
    if edit == "cut":
        # Only team 0's users and servers: a narrow change stays narrow.
        assert not affected.everyone and affected.nodes == changed
