"""The map path without the network: memory of N open streams and the cost of a policy change.

    python benchmarks/mapper_bench.py --nodes 2000 5000 [--policy restrictive] [--trace]

An in-process server (SQLite in a temporary directory) gets the tailnet of
``meshscale.bench.tailnets`` registered straight into its state, then one map stream per node
is opened and its full map built (and dropped, as if sent). Reported: the process's RSS and
Python heap (tracemalloc with ``--trace``; slower) per open stream, and for the policy change
of ``meshscale bench policy --policy restrictive`` (team 0's users lose team 0's servers) the
CPU seconds of the change, then of compressing its distinct messages (``frames``), and the
bytes queued for the streams (compressed frames).

It measures what the map path holds and does (state, policy engine, mapper); connections'
own buffers (Noise, HTTP/2, sockets) are ``meshscale bench memory``'s business. CPU seconds
are the process's, which a machine shared with other jobs disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from meshscale.bench.serverproc import rss_bytes
from meshscale.bench.tailnets import restrictive_policy, role, user_name, users_for
from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.testing import make_config


def _rss_mb() -> float:
    return rss_bytes(os.getpid()) / 2**20


async def run(nodes: int, policy: str, trace: bool, top: int, profile: bool,
              first: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshscale-mapper-bench-") as tmp:
        host = PluginHost()
        host.load(["sqlite", "policy"])
        cfg = make_config(Path(tmp), host, plugins=["sqlite", "policy"],
                          policy={"mode": "database"}, log={"level": "warn"})
        server = Server(cfg, host)
        await server.start()
        try:
            return await _measure(server, nodes, policy, trace, top, profile, first)
        finally:
            await server.stop()


async def _measure(server: Server, nodes: int, policy: str, trace: bool,
                   top: int, profile: bool, first: bool) -> dict[str, Any]:
    state, mapper = server.state, server.mapper
    assert state is not None and mapper is not None
    users = {u: state.create_user(user_name(u)) for u in range(users_for(nodes))}
    if policy == "restrictive" and first:
        # As `meshscale bench` does: the policy is in force while nodes register.
        server.set_policy(json.dumps(restrictive_policy(nodes)), "bench", persist=False)
    t0 = time.process_time()
    for i in range(nodes):
        r = role(i)
        tags = [r.tag] if policy == "restrictive" and r.server else []
        user_id = None if tags else users[max(r.user, 0)].id
        state.register_for_user(user_id, os.urandom(32), os.urandom(32),
                                {"Hostname": f"n{i}"}, tags, 106, "cli")
    if policy == "restrictive" and not first:
        server.set_policy(json.dumps(restrictive_policy(nodes)), "bench", persist=False)
    mapper.flush()  # the last joins' deltas (no event-loop turn ran to deliver them)
    register_cpu = time.process_time() - t0
    gc.collect()
    rss0 = _rss_mb()
    if trace:
        tracemalloc.start(8)
    snap0 = tracemalloc.take_snapshot() if trace else None
    t0 = time.process_time()
    sessions = []
    map_bytes = 0
    for node_id in sorted(state.nodes):
        s = mapper.open(node_id, True)
        map_bytes += len(mapper.full_map(s).frame(True))
        s.needs_full = False
        sessions.append(s)
    open_cpu = time.process_time() - t0
    gc.collect()
    out: dict[str, Any] = {
        "nodes": nodes, "policy": policy, "register_cpu_s": round(register_cpu, 2),
        "full_maps_cpu_s": round(open_cpu, 2),
        "full_map_kb_avg": round(map_bytes / nodes / 1024, 1),
        "rss_registered_mb": round(rss0, 1), "rss_streams_mb": round(_rss_mb(), 1),
        "rss_kb_per_stream": round((_rss_mb() - rss0) * 1024 / nodes, 1),
    }
    if trace and snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "traceback")
        out["traced_mb"] = round(sum(s.size_diff for s in stats) / 2**20, 1)
        out["top"] = [f"{s.size_diff / 2**20:.1f} MB {s.count_diff} blocks: "
                      + " <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                                    for f in reversed(s.traceback[-4:]))
                      for s in stats[:top]]
    if policy == "restrictive":
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        t0 = time.process_time()
        w0 = time.perf_counter()
        server.set_policy(json.dumps(restrictive_policy(nodes, cut=True)), "bench",
                          persist=False)
        mapper.flush()
        if prof is not None:
            prof.disable()
            order = os.environ.get("MAPPER_BENCH_SORT", "cumulative")  # or tottime
            pstats.Stats(prof).sort_stats(order).print_stats(25)
        out["policy_change_cpu_s"] = round(time.process_time() - t0, 3)
        out["policy_change_wall_s"] = round(time.perf_counter() - w0, 3)
        queued = [m for s in sessions for m in s.queue]
        # The writers' share of the change in the server: compressing each distinct message
        # (a message shared by many streams is compressed once).
        t0 = time.process_time()
        distinct = {id(m): m for m in queued}
        for m in distinct.values():
            m.frame(True)
        out["policy_change_frames_cpu_s"] = round(time.process_time() - t0, 3)
        out["policy_change_messages"] = len(distinct)
        out["policy_change_streams"] = sum(1 for s in sessions if s.queue)
        out["policy_change_mb"] = round(sum(len(m.frame(True)) for m in queued) / 2**20, 2)
        out["rss_after_change_mb"] = round(_rss_mb(), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[2000])
    ap.add_argument("--policy", choices=["allow-all", "restrictive"], default="restrictive")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: where the memory is")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--profile", action="store_true", help="cProfile of the policy change")
    ap.add_argument("--policy-first", action="store_true",
                    help="set the policy before nodes register (slower: each join is a change)")
    args = ap.parse_args()
    for n in args.nodes:
        out = asyncio.run(run(n, args.policy, args.trace, args.top, args.profile,
                             args.policy_first))
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
