"""Incremental topology changes give exactly what a full recompile gives."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policy import PolicyNode, PolicyUser

USERS = [PolicyUser(i, f"u{i}", f"u{i}@example.com") for i in range(1, 5)]
TAGS = ["tag:web", "tag:db", "tag:router", "tag:exit"]
POLICY = json.dumps({
    "groups": {"group:a": ["u1@example.com", "u2@example.com"]},
    "hosts": {"lan": "10.1.0.0/16"},
    "tagOwners": {t: ["group:a"] for t in TAGS},
    "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:exit"]},
    "acls": [
        {"action": "accept", "src": ["group:a"], "dst": ["tag:web:80,443", "lan:*"]},
        {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
        {"action": "accept", "src": ["u3@example.com"], "dst": ["autogroup:internet:*"]},
    ],
    "grants": [{"src": ["tag:db"], "dst": ["u4@example.com"], "app": {"example.com/cap/x": [{}]}}],
    "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],
             "users": ["root"]}],
    "nodeAttrs": [{"target": ["tag:web"], "attr": ["magicdns-aaaa"]}],
})


def random_node(rng: random.Random, node_id: int) -> PolicyNode:
    tagged = rng.random() < 0.5
    tags = frozenset(rng.sample(TAGS, rng.randint(1, 2))) if tagged else frozenset()
    routes: tuple[str, ...] = ()
    if "tag:router" in tags:
        routes = (rng.choice(["10.1.0.0/16", "10.2.0.0/16"]),)
    if "tag:exit" in tags:
        routes += ("0.0.0.0/0", "::/0")
    return PolicyNode(
        id=node_id,
        hostname=f"n{node_id}",
        user_id=None if tagged else rng.randint(1, 4),
        tags=tags,
        ipv4=f"100.64.{node_id // 250}.{node_id % 250 + 1}",
        ipv6=f"fd7a:115c:a1e0::{node_id:x}",
        routable_ips=routes,
        approved_routes=routes if rng.random() < 0.7 else (),
    )


def views(e: TailscalePolicyEngine, ids: list[int]) -> dict[int, object]:
    out: dict[int, object] = {}
    for i in ids:
        peers = e.visible_peers(i)
        out[i] = (
            e.packet_filter(i),
            None if peers is None else sorted(peers),
            e.ssh_policy(i),
            dict(e.cap_map(i)),
        )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_upsert_and_remove_match_full_recompute(seed: int) -> None:
    rng = random.Random(seed)
    nodes = {i: random_node(rng, i) for i in range(1, 31)}
    inc = TailscalePolicyEngine()
    inc.set_topology(USERS, list(nodes.values())[:10])
    inc.set_policy(POLICY)
    for node in list(nodes.values())[10:]:
        inc.upsert_node(node)  # joins
    for _ in range(15):
        nid = rng.randint(1, 30)
        if rng.random() < 0.2 and nid in nodes:
            del nodes[nid]
            inc.remove_node(nid)
            continue
        changed = random_node(rng, nid)
        if nid in nodes and rng.random() < 0.5:
            changed = replace(nodes[nid], tags=changed.tags, user_id=changed.user_id)
        nodes[nid] = changed
        inc.upsert_node(changed)
    full = TailscalePolicyEngine()
    full.set_topology(USERS, list(nodes.values()))
    full.set_policy(POLICY)
    ids = sorted(nodes)
    assert views(inc, ids) == views(full, ids)


def test_affected_covers_nodes_whose_view_changed() -> None:
    rng = random.Random(7)
    nodes = [random_node(rng, i) for i in range(1, 21)]
    e = TailscalePolicyEngine()
    e.set_topology(USERS, nodes)
    e.set_policy(POLICY)
    ids = [n.id for n in nodes]
    before = views(e, ids)
    newcomer = PolicyNode(
        99, "new", None, frozenset({"tag:web"}), "100.64.9.9", "fd7a:115c:a1e0::99"
    )
    affected = e.upsert_node(newcomer)
    after = views(e, ids)
    changed = {i for i in ids if before[i] != after[i]}
    assert affected.everyone or changed <= set(affected.nodes)
