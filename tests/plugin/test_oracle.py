"""The oracle: after any sequence of changes, every open stream's netmap equals what a freshly
started server sends (issue 21, architecture.md §6).

Hypothesis draws sequences of joins, leaves, re-tags, user moves, expiries, route
advertisements and approvals, user renames, stream reconnects and policy changes, some with
device approval on (new nodes wait until admitted; an approved node may be unapproved, in either
mode). Each is applied to a running in-process server with simulated nodes streaming (real
Noise, HTTP/2, zstd); after each step settles,
every stream's accumulated netmap (full map plus every delta and patch, applied as tailscale's
controlclient does: ``tests/plugin/netmap.py``) must equal the full map a server built from
the same database sends (``tests/plugin/oracle.py``): self node, peers with
AllowedIPs and PrimaryRoutes, packet filter, SSH policy, DNS, DERP map, CapMap, user profiles.

Budget: the suite runs ``MESHSCALE_ORACLE_EXAMPLES`` examples (default 100, about 20 s here).
The longer run (docs/testing.md)::

    MESHSCALE_ORACLE_EXAMPLES=500 MESHSCALE_ORACLE_STEPS=30 \\
        bash scripts/test -q tests/plugin/test_oracle.py

A failure prints the shrunk step list and the differing fields; each bug found this way keeps a
named regression test in tests/plugin/test_incremental_maps.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscale.mapper.pacing import FlushPacer
from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.state.models import utcnow
from meshscale.testing import make_config
from tests.plugin.oracle import Fleet

EXAMPLES = int(os.environ.get("MESHSCALE_ORACLE_EXAMPLES", "100"))
MAX_STEPS = int(os.environ.get("MESHSCALE_ORACLE_STEPS", "12"))
USERS = ("alice", "bob", "carol")
TAGS = ("tag:server", "tag:router")
ROUTE_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("10.1.0.0/16",),
    ("10.1.0.0/16", "0.0.0.0/0", "::/0"),
    ("10.2.0.0/24",),
)
OWNERS = {"tag:server": ["alice@example.com"], "tag:router": ["alice@example.com"]}

POLICIES: tuple[dict[str, Any], ...] = (
    # Everyone reaches everyone; SSH check among alice's nodes (issue 21).
    {"tagOwners": OWNERS,
     "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
     "ssh": [{"action": "check", "src": ["alice@example.com"], "dst": ["alice@example.com"],
              "users": ["root", "autogroup:nonroot"], "checkPeriod": "12h"}]},
    # Groups and tags; SSH into servers and into one's own nodes; nodeAttrs; auto-approvals.
    {"tagOwners": OWNERS,
     "groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
     "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"]},
              {"action": "accept", "src": ["alice@example.com"], "dst": ["*:*"]},
              {"action": "accept", "src": ["tag:router"], "dst": ["tag:server:*"]}],
     "ssh": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:server"],
              "users": ["root"]},
             {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"],
              "users": ["autogroup:nonroot"]}],
     "nodeAttrs": [{"target": ["bob@example.com"], "attr": ["magicdns-aaaa"]}],
     "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]},
                       "exitNode": ["alice@example.com"]}},
    # autogroup:self for members; routers reach everything; subnet access by prefix.
    {"tagOwners": OWNERS,
     "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
              {"action": "accept", "src": ["carol@example.com"], "dst": ["10.1.0.0/16:*"]},
              {"action": "accept", "src": ["tag:router"], "dst": ["*:*"]}],
     "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"],
              "users": ["autogroup:nonroot"]}],
     "autoApprovers": {"routes": {"10.1.0.0/16": ["carol@example.com", "tag:router"]}}},
    # IPv4 disabled for one user (peers are seen differently per viewer); grants.
    {"tagOwners": OWNERS,
     "grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}],
     "nodeAttrs": [{"target": ["carol@example.com"], "attr": ["disable-ipv4"]}],
     "ssh": [{"action": "accept", "src": ["tag:server"], "dst": ["tag:router"],
              "users": ["root"]}]},
    # No rules at all: allow-all behaviour from the engine.
    {"tagOwners": OWNERS},
    # Restrictive, as `meshscale bench --policy restrictive`: teams reach their tagged
    # servers, servers each other, members their own devices; Tailscale's default SSH rule.
    # The next one cuts one ACL, so changing between them exercises the narrow policy change
    # (only the members of changed grants are recomputed).
    {"tagOwners": OWNERS,
     "groups": {"group:a": ["alice@example.com"],
                "group:b": ["bob@example.com", "carol@example.com"]},
     "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
              {"action": "accept", "src": ["group:a"], "dst": ["tag:server:*"]},
              {"action": "accept", "src": ["tag:server"], "dst": ["tag:server:*"]},
              {"action": "accept", "src": ["group:b"], "dst": ["tag:router:*"]}],
     "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"],
              "users": ["autogroup:nonroot", "root"]}]},
    {"tagOwners": OWNERS,
     "groups": {"group:a": ["alice@example.com"],
                "group:b": ["bob@example.com", "carol@example.com"]},
     "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
              {"action": "accept", "src": ["tag:server"], "dst": ["tag:server:*"]},
              {"action": "accept", "src": ["group:b"], "dst": ["tag:router:*"]}],
     "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"],
              "users": ["autogroup:nonroot", "root"]}]},
)

OPS = ("join", "join_tagged", "leave", "retag", "move", "expire", "extend", "advertise",
       "approve", "policy", "rename_user", "reconnect", "relogin", "disconnect", "rotate",
       "rename_node", "admit", "unapprove")
NETWORK_OPS = ("retag", "move", "relogin", "advertise", "rotate", "reconnect")
# One step: (operation, a, b, settle) with small integers the runner maps onto the current
# fleet; without ``settle`` the next step follows at once (changes pile up in one batch).
step = st.tuples(st.sampled_from(OPS), st.integers(0, 7), st.integers(0, 7),
                 st.sampled_from([True, True, True, False]))
Step = tuple[str, int, int, bool]


class Scenario:
    def __init__(self, server: Server, fleet: Fleet) -> None:
        self.server = server
        self.fleet = fleet
        self.keys: dict[str, str] = {}
        assert server.state is not None
        for name in USERS:
            user = server.state.create_user(name, email=f"{name}@example.com")
            self.keys[name] = server.state.create_key(user, reusable=True)[1]
        owner = server.state.user("alice")
        for tag in TAGS:
            self.keys[tag] = server.state.create_key(owner, reusable=True, tags=[tag])[1]
        self.renames = 0
        self.log: list[str] = []

    def _node(self, a: int) -> int | None:
        ids = sorted(self.fleet.nodes)
        return ids[a % len(ids)] if ids else None

    async def run(self, op: str, a: int, b: int) -> None:
        state, life = self.server.state, self.server.lifecycle
        assert state is not None and life is not None
        node_id = self._node(a)
        self.log.append(f"{op}({a}, {b}) node={node_id}")
        if node_id is not None and op in NETWORK_OPS and node_id not in self.fleet.streams:
            await self.fleet.come_back(node_id)  # a disconnected client returns first
            if op == "reconnect":
                return
        if op == "join" or (node_id is None and op != "policy"):
            if len(self.fleet.nodes) < 8:
                await self.fleet.join(self.keys[USERS[b % 3]], f"n{len(self.log)}")
        elif op == "join_tagged":
            if len(self.fleet.nodes) < 8:
                await self.fleet.join(self.keys[TAGS[b % 2]], f"t{len(self.log)}",
                                      RoutableIPs=list(ROUTE_SETS[a % 4]))
        elif op == "policy":
            self.server.set_policy(json.dumps(POLICIES[b % len(POLICIES)]), "oracle",
                                   persist=True)
        elif node_id is None:
            return
        elif op == "disconnect":
            await self.fleet.disconnect(node_id)
        elif op == "rotate":
            if not state.nodes[node_id].expired():  # an expired key must log in again
                await self.fleet.reregister(node_id, None)
        elif op == "rename_node":
            life.rename(node_id, f"renamed-{len(self.log)}")
        elif op == "leave":
            life.delete(node_id)
            await self.fleet.nodes.pop(node_id).conn.close()
        elif op in ("retag", "move"):
            key = self.keys[TAGS[b % 2]] if op == "retag" else self.keys[USERS[b % 3]]
            await self.fleet.reregister(node_id, key)
        elif op == "relogin":
            # An expired node logs in again with the same node key and keeps its stream
            # (owner or tags may change with the key); a live node's is a plain refresh.
            key = self.keys[(*USERS, *TAGS)[b % 5]]
            await self.fleet.reregister(node_id, key, rotate=False)
        elif op == "expire":
            life.expire(node_id)
        elif op == "extend":
            life.expire(node_id, utcnow() + timedelta(hours=1 + b))
        elif op == "advertise":
            node = self.fleet.nodes[node_id]
            node.hostinfo["RoutableIPs"] = list(ROUTE_SETS[b % 4])
            status = await node.lite_update([f"127.0.0.1:{41000 + node_id}"])
            # An expired (cut-off) node's updates are refused and reach nobody.
            assert status == (403 if state.nodes[node_id].expired() else 200), status
        elif op == "approve":
            routes = ROUTE_SETS[b % 4]
            life.approve_routes(node_id, routes[: 1 + b % max(1, len(routes))])
        elif op == "admit":  # device approval (the scenario runs with node.approval: manual)
            if not state.nodes[node_id].approved:
                life.approve(node_id)
        elif op == "unapprove":  # the reverse, in either mode (Tailscale's authorized: false)
            if state.nodes[node_id].approved:
                life.unapprove(node_id)
                if node_id in self.fleet.streams:
                    await self.fleet.poll_again(node_id)
        elif op == "rename_user":
            self.renames += 1
            life.rename_user(b % 3 + 1, f"{USERS[b % 3]}{self.renames}")
        elif op == "reconnect":
            await self.fleet.open(node_id)


class Gather(FlushPacer):
    """Every flush waits 20 ms: changes of several steps meet in one batch (the window a busy
    server opens, pacing.py), deletions among them."""

    def delay(self, now: float) -> float:
        return 0.02


async def _scenario(policy: int, steps: list[Step], data_dir: Path,
                    manual: bool = False, paced: bool = False) -> None:
    host = PluginHost()
    host.load(["sqlite", "policy"])
    cfg = make_config(data_dir, host, plugins=["sqlite", "policy"], policy={"mode": "database"},
                      node={"approval": "manual" if manual else "auto"})
    server = Server(cfg, host)
    await server.start()
    if paced:
        assert server.mapper is not None
        server.mapper._pacer = Gather()
    fleet = Fleet(server)
    try:
        scenario = Scenario(server, fleet)
        # Most examples start under a policy (the interesting outputs need one); -1: none.
        first: list[Step] = [("policy", 0, policy, True)] if policy >= 0 else []
        todo = [*first, *steps]
        for i, (op, a, b, settle) in enumerate(todo):
            await scenario.run(op, a, b)
            if not settle and i < len(todo) - 1:
                continue
            await fleet.settle()
            bad = fleet.mismatches()
            assert not bad, ("after " + " ; ".join(scenario.log) + "\n"
                             + json.dumps(bad, indent=1, default=str)[:6000])
    finally:
        await fleet.close()
        await server.stop()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy=st.integers(-1, len(POLICIES) - 1),
       steps=st.lists(step, min_size=1, max_size=MAX_STEPS),
       manual=st.sampled_from([False, False, True]), paced=st.booleans())
def test_incremental_maps_equal_a_fresh_server(policy: int, steps: list[Step],
                                               manual: bool, paced: bool) -> None:
    """``manual``: new nodes wait for approval (``admit`` lets one in); ``paced``: every
    flush gathers changes for 20 ms."""
    with tempfile.TemporaryDirectory(prefix="meshscale-oracle-") as tmp:
        asyncio.run(_scenario(policy, steps, Path(tmp), manual, paced))
