"""Subnet-route figures: many auto-approved routes (issue 11, item 8).

    python benchmarks/routes_bench.py [--routes 1000 10000] [--routers 2]

A tailnet of ``--routers`` tagged subnet routers that each advertise the same R /24 prefixes,
all approved by ``autoApprovers``, plus a laptop. It reports, per R, the wall time of what
used to block the event loop for seconds at R = 10,000 (RouteTable sorted every primary list
with ``list.index`` inside the sort key, O(R^2)):

- advertise: the first router's Hostinfo with R routes arrives (auto-approval, policy update,
  route table, primary election);
- policy change: a new policy is installed and every router's approvals are re-decided;
- failover: the primary router goes offline and the next one takes its R prefixes;
- full map: the laptop's full map (the routers' peer entries carry R routes each).

State, policy engine and mapper are the server's own, wired as the server wires them;
storage is a no-op (the database is not what is measured here).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from meshscale.configload import build_config
from meshscale.mapper.mapper import Mapper
from meshscale.mapper.session import MapSession
from meshscale.pluginhost import PluginHost
from meshscale.plugins.policy.engine import TailscalePolicyEngine
from meshscale.state.models import Node, User
from meshscale.state.store import PolicyHooks, State
from meshscale.storage.base import Op, Snapshot


class _NoStorage:
    def load(self) -> Snapshot:
        return Snapshot()

    def apply(self, ops: Sequence[Op]) -> None:
        del ops

    def close(self) -> None:
        return None


def policy(extra_acl: bool = False) -> str:
    acls = [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]
    if extra_acl:
        acls.append({"action": "accept", "src": ["alice@"], "dst": ["10.0.0.0/8:22"]})
    return json.dumps({
        "tagOwners": {"tag:router": ["alice@"]},
        "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}},
        "acls": acls,
    })


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(routes: int, routers: int) -> dict[str, float]:
    prefixes = [f"10.{i // 256}.{i % 256}.0/24" for i in range(routes)]
    with tempfile.TemporaryDirectory() as tmp:
        host = PluginHost()
        config = build_config({"data_dir": tmp}, host.collect_sync("meshscale_config_sections"))
    state = State(config, _NoStorage())  # type: ignore[arg-type]
    nodes = [Node(id=i, machine_key=bytes([i]) * 32, node_key=bytes([i, 1]) * 16,
                  hostname=f"r{i}", given_name=f"r{i}", user_id=None, tags=("tag:router",),
                  ipv4=f"100.64.0.{i}", ipv6=f"fd7a:115c:a1e0::{i}", online=True,
                  hostinfo={"Hostname": f"r{i}"}) for i in range(1, routers + 1)]
    laptop_id = routers + 1
    nodes.append(Node(id=laptop_id, machine_key=b"\xfe" * 32, node_key=b"\xfd" * 32,
                      hostname="laptop", given_name="laptop", user_id=1,
                      ipv4="100.64.1.1", ipv6="fd7a:115c:a1e0::101", online=True))
    state.load(Snapshot(users=[User(1, "alice")], nodes=nodes))
    engine = TailscalePolicyEngine(control_url="http://127.0.0.1")
    engine.set_topology(*state.policy_topology())
    engine.set_policy(policy())
    state.policy_engine_hooks = PolicyHooks(
        node_upserted=engine.upsert_node, node_removed=engine.remove_node,
        user_upserted=engine.upsert_user, user_removed=engine.remove_user,
        auto_routes=engine.auto_approved_routes)
    state.refresh_auto_approvals()
    mapper = Mapper(config, state, engine, dict)
    out: dict[str, float] = {}
    out["advertise"] = timed(lambda: state.client_update(
        state.nodes[1], None, None, {"Hostname": "r1", "RoutableIPs": prefixes}))
    for i in range(2, routers + 1):
        state.client_update(state.nodes[i], None, None,
                            {"Hostname": f"r{i}", "RoutableIPs": prefixes})
    mapper.flush()
    assert state.routes.primaries.get(1) == prefixes, "r1 should be primary for every prefix"

    def policy_change() -> None:
        engine.set_policy(policy(extra_acl=True))
        state.refresh_auto_approvals()

    out["policy change"] = timed(policy_change)
    out["failover"] = timed(lambda: state.set_online(state.nodes[1], False))
    assert routers < 2 or state.routes.primaries.get(2) == prefixes
    mapper.flush()
    out["full map"] = timed(lambda: mapper.full_map(MapSession(laptop_id, True)).frame(True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--routers", type=int, default=2)
    args = parser.parse_args()
    print(f"{'routes':>8}  {'advertise':>10}  {'policy change':>14}  {'failover':>9}  "
          f"{'full map':>9}   (seconds, {args.routers} routers each serving every route)")
    for r in args.routes:
        f = run(r, args.routers)
        print(f"{r:>8}  {f['advertise']:>10.3f}  {f['policy change']:>14.3f}  "
              f"{f['failover']:>9.3f}  {f['full map']:>9.3f}")


if __name__ == "__main__":
    main()
