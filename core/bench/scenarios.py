"""Benchmark scenarios of one measurement each: storm, fanout, memory, register (issue 6).

Each starts its own server process on 127.0.0.1 (``harness.Bench``), builds a fleet of
simulated nodes in this process, measures, stops everything, and returns a flat dict of
figures. The scenarios that drive a sequence of changes have modules of their own:
``churn.py`` (events at a rate) and ``policychange.py`` (a policy that cuts access).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from meshscale.bench.fleet import percentiles
from meshscale.bench.harness import Bench, backlog_grew, drained, own_cpu, settle

SELF_POLICY = {"acls": [{"action": "accept", "src": ["autogroup:member"],
                         "dst": ["autogroup:self:*"]}]}


# -- storm ----------------------------------------------------------------------------------


async def storm(nodes: int, events: int, policy: str = "allow-all", timeout: float = 600,
                database: str = "sqlite", profile: str | None = None,
                workers: int = 0) -> dict[str, Any]:
    """N pre-registered nodes open their map streams at once; time until all have full maps.

    ``policy``: allow-all, restrictive (tailnets.py), or self (every member reaches only their
    own devices, ten per user: the ``--self-policy`` of the first round)."""
    self_policy = policy == "self"
    async with Bench(["sqlite", "policy"] if self_policy else ["sqlite"], None, database,
                     policy="allow-all" if self_policy else policy, profile=profile,
                     workers=workers) as b:
        assert b.fleet is not None
        if self_policy:
            b.server.admin.call("PUT", "/v1/policy", {"policy": json.dumps(SELF_POLICY)})
            users = max(1, nodes // 10)
            keys = [b.key(f"u{i}") for i in range(users)]
            await b.fleet.add(nodes, "", keys=lambda i: keys[i % users])
        else:
            await b.populate(nodes, "storm")
        cpu0, gen0, bytes0 = b.mark()
        seconds = await b.fleet.open_streams(b.fleet.members, timeout)
        arrivals = [m.first_map_at for m in b.fleet.members]
        t0 = min(arrivals) - 0.0
        out = {"scenario": "storm", "nodes": nodes,
               "policy": "autogroup:self" if self_policy else policy,
               "all_full_maps_s": round(seconds, 3)}
        out.update({f"first_map_{k}_s": round(v, 3) for k, v in
                    percentiles([a - t0 for a in arrivals]).items()})
        out.update(b.figures(cpu0, gen0, bytes0, nodes))
        return out


# -- fanout ---------------------------------------------------------------------------------


async def fanout(nodes: int, events: int, timeout: float = 120, database: str = "sqlite",
                 policy: str = "allow-all", profile: str | None = None,
                 workers: int = 0) -> dict[str, Any]:
    """One node's new endpoint; latency until every streaming peer that sees it received it
    (all N-1 under allow-all)."""
    async with Bench(["sqlite"], database=database, policy=policy, profile=profile,
                     workers=workers) as b:
        assert b.fleet is not None
        await b.populate(nodes, "fanout")
        await b.fleet.open_streams(b.fleet.members, timeout=600)
        await settle(b.fleet)
        # Full maps still on the wire (streams resynced after falling behind in the set-up's
        # storm: 1.4 MB each at 10,000) are not messages yet: wait for the bytes too, or
        # they are counted as the fan-out's.
        await drained(b.fleet)
        members = b.fleet.members
        latencies: list[float] = []
        cpu0, gen0, bytes0 = b.mark()
        for rep in range(events):
            # The sender changes each event: one node changing its endpoints 200 times in a
            # row is held back by the per-node update limit (client_limits.updates_per_second),
            # which would make this measure the limiter instead of the fan-out.
            sender = members[rep % len(members)]
            marker = f"127.0.0.1:{10000 + rep}"
            w = b.fleet.watch(marker, b.viewers(sender.index))
            await sender.node.lite_update([marker])
            await asyncio.wait_for(w.done.wait(), timeout)
            latencies.append(max(w.arrivals))
        out: dict[str, Any] = {"scenario": "fanout", "nodes": nodes, "events": events,
                               "policy": policy}
        out.update({f"latency_{k}_ms": round(v * 1000, 2)
                    for k, v in percentiles(latencies).items()})
        out.update(b.figures(cpu0, gen0, bytes0, events))
        reached = sum(b.viewers(members[rep % len(members)].index) for rep in range(events))
        out["bytes_per_event_per_peer"] = round(
            (out["bytes_received"]) / max(reached, 1), 1)
        out["backlog_grew"] = backlog_grew(latencies)
        return out


# -- memory ----------------------------------------------------------------------------------


async def memory(nodes: int, events: int, database: str = "sqlite",
                 policy: str = "allow-all") -> dict[str, Any]:
    """RSS of the server with N idle connected nodes (streams open, keep-alives only).

    All nodes register first; their streams then open in four steps, with the server's RSS
    read after each step has settled: the curve of RSS against connected nodes.
    """
    async with Bench(["sqlite"], database=database, policy=policy) as b:
        assert b.fleet is not None
        rss0 = b.server.rss()
        await b.populate(nodes, "idle")
        registered_rss = b.server.rss()
        points = []
        step = max(nodes // 4, 1)
        for start in range(0, nodes, step):
            batch = b.fleet.members[start:start + step]
            await b.fleet.open_streams(batch, timeout=1200)
            await settle(b.fleet)
            points.append({"nodes": start + len(batch),
                           "rss_mb": round(b.server.rss() / 2**20, 1)})
        return {"scenario": "memory", "nodes": nodes, "policy": policy,
                "empty_rss_mb": round(rss0 / 2**20, 1),
                "registered_rss_mb": round(registered_rss / 2**20, 1),
                "server_rss_mb": points[-1]["rss_mb"], "curve": points,
                "server_peak_rss_mb": round(b.server.peak_rss() / 2**20, 1),
                "rss_kb_per_node": round((points[-1]["rss_mb"] - rss0 / 2**20) * 1024 / nodes, 1)}


# -- register: storage-bound figures ------------------------------------------------------------


async def register(nodes: int, events: int, database: str = "sqlite") -> dict[str, Any]:
    """N nodes register with one reusable key, 64 at a time (each registration is one storage
    transaction): registrations per second. Then the server is stopped and started again over
    the N stored nodes: cold-start seconds, from process start until it answers its socket."""
    async with Bench(["sqlite"], database=database) as b:
        assert b.fleet is not None
        key = b.key("reg")
        cpu0, gen0 = b.server.cpu(), own_cpu()
        t0 = time.perf_counter()
        await b.fleet.add(nodes, key)
        seconds = time.perf_counter() - t0
        cpu = b.server.cpu() - cpu0
        gen = own_cpu() - gen0
        b.server.stop()
        t1 = time.perf_counter()
        b.server.start(timeout=600)
        cold = time.perf_counter() - t1
        assert len(b.server.admin.call("GET", "/v1/nodes")) == nodes
        return {"scenario": "register", "database": database, "nodes": nodes,
                "register_all_s": round(seconds, 2),
                "registrations_per_s": round(nodes / seconds, 1),
                "server_cpu_ms_per_registration": round(cpu * 1000 / nodes, 2),
                "generator_cpu_s": round(gen, 1),
                "empty_start_s": round(b.first_start_s, 2),
                "cold_start_s": round(cold, 2),
                "cold_start_rss_mb": round(b.server.rss() / 2**20, 1)}
