"""The policy scenario: a policy change that cuts access, until every affected node knows.

The tailnet it needs (``tag_policy``: tagged groups each reaching the next, or the restrictive
tailnet of tailnets.py), who loses whom, and the watch for the removals.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from meshscale.bench.fleet import Member
from meshscale.bench.harness import Bench, drained, own_cpu, settle
from meshscale.bench.tailnets import restrictive_policy, role, sees


def tag_policy(groups: int, cut: bool) -> dict[str, Any]:
    """Each group reaches itself and the next; ``cut`` removes g0 -> g1."""
    acls = []
    for i in range(groups):
        dst = [f"tag:g{i}:*"]
        if not (cut and i == 0):
            dst.append(f"tag:g{(i + 1) % groups}:*")
        acls.append({"action": "accept", "src": [f"tag:g{i}"], "dst": dst})
    return {"tagOwners": {f"tag:g{i}": ["autogroup:admin"] for i in range(groups)},
            "acls": acls}


async def policy(nodes: int, events: int, groups: int = 10, timeout: float = 600,
                 database: str = "sqlite", policy: str = "allow-all") -> dict[str, Any]:
    """A policy change that cuts access; until every affected node knows.

    A policy change needs a policy: by default (``allow-all``, the first round's scenario) N
    tagged nodes in 10 groups, each reaching its own and the next, where g0 loses g1; with
    ``restrictive`` the tailnet of tailnets.py, where team 0's users lose team 0's servers.
    """
    async with Bench(["sqlite", "policy"], None, database, policy=policy) as b:
        fleet = b.fleet
        assert fleet is not None
        admin = b.server.admin
        expect: dict[int, set[int]] = {}
        if policy == "restrictive":
            await b.populate(nodes, "policy")
            new_policy = restrictive_policy(nodes, cut=True)
        else:
            admin.call("POST", "/v1/users", {"name": "admin"})
            admin.call("PUT", "/v1/policy", {"policy": json.dumps(tag_policy(groups, False))})
            keys = [b.tagged_key(f"tag:g{i}") for i in range(groups)]
            await fleet.add(nodes, "", keys=lambda i: keys[i % groups])
            new_policy = tag_policy(groups, True)
        await fleet.open_streams(fleet.members, timeout=timeout)
        await settle(fleet)
        if policy == "restrictive":
            # Who loses whom: pairs that saw each other before the cut and not after.
            members = fleet.members
            team0 = [m for m in members if role(m.index).team == 0]
            for m in team0:
                gone = {o.node_id for o in team0 if sees(m.index, o.index)
                        and not sees(m.index, o.index, cut=True)}
                if gone:
                    expect[m.node_id] = gone
        else:
            by_group: dict[int, set[int]] = {}
            for m in fleet.members:
                by_group.setdefault(m.index % groups, set()).add(m.node_id)
            for nid in by_group[0]:
                expect[nid] = set(by_group[1])
            for nid in by_group[1]:
                expect[nid] = set(by_group[0])
        # Streams that fell behind while all opened get a second full map (MAX_BACKLOG): on a
        # loaded machine those can still be on the wire after a quiet spell of completed
        # messages, and would count as the change's bytes. Wait until the bytes stop too (but
        # keep-alives), and report how many resyncs there were.
        await settle(fleet, quiet=2.0, limit=300)
        await drained(fleet)
        overflows = sum(x["overflows"] for x in admin.call("GET", "/v1/debug/sessions?known=0"))
        rss_before, peak_before = b.server.rss(), b.server.peak_rss()
        full_maps0 = sum(m.full_maps for m in fleet.members)
        done = asyncio.Event()
        arrivals: dict[int, float] = {}

        def seen(msg: dict[str, Any], now: float, member: Member) -> None:
            want = expect.get(member.node_id)
            if not want:
                return
            want.difference_update(msg.get("PeersRemoved") or ())
            if not want and member.node_id not in arrivals:
                arrivals[member.node_id] = now
                if len(arrivals) == len(expect):
                    done.set()

        fleet.observers.append(seen)
        cpu0, gen0, bytes0 = b.server.cpu(), own_cpu(), fleet.bytes_received
        t0 = time.perf_counter()
        admin.call("PUT", "/v1/policy", {"policy": json.dumps(new_policy)})
        await asyncio.wait_for(done.wait(), timeout)
        seconds = max(arrivals.values()) - t0
        out: dict[str, Any] = {"scenario": "policy", "nodes": nodes,
                               "policy": "restrictive" if policy == "restrictive" else
                               f"{groups} tag groups", "affected_nodes": len(expect),
                               "all_updated_s": round(seconds, 3),
                               "server_rss_before_mb": round(rss_before / 2**20, 1),
                               "server_peak_rss_before_mb": round(peak_before / 2**20, 1)}
        out.update(b.figures(cpu0, gen0, bytes0, 1))
        out["mb_sent"] = round(out["bytes_received"] / 2**20, 2)
        out["full_maps_during_change"] = sum(m.full_maps for m in fleet.members) - full_maps0
        out["stream_overflows_before_change"] = overflows
        return out
