"""Policy engine scale figures: compile time and the cost of one change.

    python benchmarks/policy_bench.py [--nodes 1000 10000] [--markdown]

For each tailnet size it builds a synthetic tailnet (users with laptops and phones, tagged
servers, subnet routers, exit nodes) and a policy shaped like a real one (groups, tag-based
ACLs, grants with app capabilities, autogroup:self, SSH rules, nodeAttrs), then reports:

- compile: set_topology + set_policy (parse, validate, place every node in every grant);
- first answers: packet_filter + visible_peers + ssh_policy for every node, once (what a
  server start sends);
- join: upsert_node of a new laptop, plus recomputing the views of the nodes it affects;
- retag: a server's tags change, same measure.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.policy import Affected, PolicyNode, PolicyUser

TEAMS = ["eng", "ops", "sales", "support"]
SERVER_TAGS = ["tag:web", "tag:db", "tag:cache", "tag:ci"]


def tailnet(n: int, seed: int = 1) -> tuple[list[PolicyUser], list[PolicyNode]]:
    rng = random.Random(seed)
    users = [PolicyUser(i, f"user{i}", f"user{i}@example.com") for i in range(1, n // 4 + 2)]
    nodes = []
    for i in range(1, n + 1):
        ip4 = f"100.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        ip6 = f"fd7a:115c:a1e0::{i:x}"
        kind = rng.random()
        if kind < 0.6:
            node = PolicyNode(i, f"dev{i}", rng.choice(users).id, ipv4=ip4, ipv6=ip6)
        elif kind < 0.95:
            tag = frozenset({rng.choice(SERVER_TAGS)})
            node = PolicyNode(i, f"srv{i}", None, tag, ip4, ip6)
        elif kind < 0.98:
            route = f"10.{i % 256}.{(i // 256) % 256}.0/24"
            node = PolicyNode(i, f"rtr{i}", None, frozenset({"tag:router"}), ip4, ip6,
                              (route,), (route,))
        else:
            exits = ("0.0.0.0/0", "::/0")
            node = PolicyNode(i, f"exit{i}", None, frozenset({"tag:exit"}), ip4, ip6,
                              exits, exits)
        nodes.append(node)
    return users, nodes


def policy(users: list[PolicyUser]) -> str:
    groups = {f"group:{t}": [u.email for u in users[k :: len(TEAMS)]]
              for k, t in enumerate(TEAMS)}
    tags = [*SERVER_TAGS, "tag:router", "tag:exit"]
    return json.dumps({
        "groups": groups,
        "hosts": {"office": "10.0.0.0/8"},
        "tagOwners": {t: ["group:ops"] for t in tags},
        "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:exit"]},
        "acls": [
            {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80,443", "tag:ci:*"]},
            {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:5432", "tag:cache:6379"]},
            {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432", "tag:cache:6379"]},
            {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
            {"action": "accept", "src": ["group:ops", "group:eng"], "dst": ["office:*"]},
            {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:internet:*"]},
        ],
        "grants": [
            {"src": ["group:support"], "dst": ["tag:web"], "ip": ["tcp:443"]},
            {"src": ["group:eng"], "dst": ["tag:ci"],
             "app": {"example.com/cap/ci": [{"role": "dev"}]}},
        ],
        "ssh": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],
             "users": ["autogroup:nonroot", "root"]},
            {"action": "check", "src": ["group:ops"], "dst": ["tag:db", "tag:web"],
             "users": ["root"]},
        ],
        "nodeAttrs": [{"target": ["tag:exit"], "attr": ["suggest-exit-node"]}],
    })


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def views(engine: TailscalePolicyEngine, ids: list[int]) -> None:
    for i in ids:
        engine.packet_filter(i)
        engine.visible_peers(i)
        engine.ssh_policy(i)


def change_cost(
    engine: TailscalePolicyEngine, node: PolicyNode, all_ids: list[int]
) -> tuple[float, float, int]:
    t_upsert, affected = timed(lambda: engine.upsert_node(node))
    assert isinstance(affected, Affected)
    ids = all_ids if affected.everyone else sorted(affected.nodes)
    t_views, _ = timed(lambda: views(engine, ids))
    return t_upsert, t_views, len(ids)


def run(n: int) -> dict[str, Any]:
    users, nodes = tailnet(n)
    text = policy(users)
    engine = TailscalePolicyEngine("https://control.example")
    t_compile, _ = timed(lambda: (engine.set_topology(users, nodes), engine.set_policy(text)))
    ids = [x.id for x in nodes]
    t_first, _ = timed(lambda: views(engine, ids))
    newcomer = PolicyNode(n + 1, "newlaptop", users[0].id, ipv4="100.127.255.1",
                          ipv6="fd7a:115c:a1e0::ffff:1")
    join = change_cost(engine, newcomer, [*ids, n + 1])
    server = next(x for x in nodes if "tag:db" in x.tags)
    retag = PolicyNode(server.id, server.hostname, None, frozenset({"tag:web"}),
                       server.ipv4, server.ipv6)
    retag_cost = change_cost(engine, retag, [*ids, n + 1])
    return {"nodes": n, "compile_s": t_compile, "first_views_s": t_first,
            "join": join, "retag": retag_cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    rows = [run(n) for n in args.nodes]
    if args.markdown:
        print("| nodes | compile | first views (all nodes) | join: upsert | join: affected "
              "views | retag: upsert | retag: affected views |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        j, t = r["join"], r["retag"]
        if args.markdown:
            print(f"| {r['nodes']} | {r['compile_s'] * 1000:.0f} ms | "
                  f"{r['first_views_s']:.2f} s | {j[0] * 1000:.2f} ms | "
                  f"{j[1] * 1000:.0f} ms ({j[2]} nodes) | {t[0] * 1000:.2f} ms | "
                  f"{t[1] * 1000:.0f} ms ({t[2]} nodes) |")
        else:
            print(f"{r['nodes']:>6} nodes: compile {r['compile_s'] * 1000:8.1f} ms, "
                  f"first views {r['first_views_s']:7.2f} s; join: upsert "
                  f"{j[0] * 1000:7.2f} ms, views of {j[2]} affected {j[1] * 1000:8.1f} ms; "
                  f"retag: upsert {t[0] * 1000:7.2f} ms, views of {t[2]} affected "
                  f"{t[1] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
