"""The churn scenario: K events a second on a connected fleet, and each event's latency.

70 % endpoint changes, 20 % reconnects, 10 % ephemeral join/leave, at one or more rates on the
same fleet. Its generator (``_Churn``) keeps per-event watches and the in-flight set across
phases, which is why it is a module of its own beside ``scenarios.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import time
from collections.abc import Awaitable
from typing import Any

from meshscale.bench.fleet import Fleet, Member, Watch, percentiles
from meshscale.bench.harness import Bench, backlog_grew, drained, settle
from meshscale.bench.tailnets import role, user_name
from meshscale.looptrace import LagMonitor

log = logging.getLogger("meshscale.bench.scenarios")  # its name before the split, for readers


async def churn(nodes: int, events: int, rate: float | list[float] = 10.0,
                timeout: float = 30.0, database: str = "sqlite",
                policy: str = "allow-all") -> dict[str, Any]:
    """K events/s: 70 % endpoint changes, 20 % reconnects, 10 % ephemeral join/leave.

    Latency of an event: until every streaming peer saw it (endpoint change, join, leave), or
    until the reconnecting node has its full map. Several rates (``rate=[2, 5, 10]``) run one
    after the other on the same fleet, ``events`` each, settling in between: a 10,000-node
    fleet takes minutes to build. One rate gives one flat dict, several a ``phases`` list.
    """
    rates = [rate] if isinstance(rate, (int, float)) else list(rate)
    if not rates or any(r <= 0 for r in rates):
        raise ValueError("churn needs one or more rates above 0")
    async with Bench(["sqlite"], {"node": {"ephemeral": {"inactivity_timeout": "1s"}}},
                     database, policy=policy) as b:
        fleet = b.fleet
        assert fleet is not None
        await b.populate(nodes, "churn")
        await fleet.open_streams(fleet.members, timeout=1200)
        await settle(fleet)
        run = _Churn(b, fleet, nodes, timeout)
        phases = []
        for k in rates:
            await drained(fleet)
            phases.append(await run.phase(k, events))
        if len(phases) == 1:
            return phases[0]
        return {"scenario": "churn", "nodes": nodes, "events": events, "policy": policy,
                "phases": phases}


class _Churn:
    """The churn generator over one fleet; each phase() is one rate."""

    def __init__(self, b: Bench, fleet: Fleet, nodes: int, timeout: float) -> None:
        self.b, self.fleet, self.nodes, self.timeout = b, fleet, nodes, timeout
        # Under the restrictive policy the ephemeral nodes are user 0's devices: that user's
        # other devices and team 0's servers see them.
        self.eph_key = b.key("eph" if b.policy == "allow-all" else user_name(0), ephemeral=True)
        self.join_viewers = nodes if b.policy == "allow-all" else sum(
            1 for j in range(nodes)
            if (role(j).server and role(j).team == 0) or role(j).user == 0)
        self.viewers: dict[int, int] = {}  # b.viewers() walks the tailnet: once per member
        self.rng = random.Random(7)
        self.joins: dict[str, Watch] = {}
        self.removed: dict[int, Watch] = {}
        self.streaming = list(fleet.members)
        self.in_flight: set[int] = set()  # members whose endpoint change is not yet seen by all
        self.rep = 0  # event counter across phases: markers and hostnames stay unique
        self.latencies: dict[str, list[float]] = {}
        # Per reconnect and join: (latency, start, {step: seconds after start}), for the
        # slowest ones' breakdown in the figures (where a tail's time goes).
        self.steps: dict[str, list[tuple[float, float, dict[str, float]]]] = {}
        fleet.observers.append(self.seen)

    def seen(self, msg: dict[str, Any], now: float, member: Member) -> None:
        for peer in msg.get("PeersChanged") or ():
            w = self.joins.get(peer.get("Key", ""))
            if w is not None:
                w.hit(now, member.index)
        for node_id in msg.get("PeersRemoved") or ():
            w = self.removed.get(node_id)
            if w is not None:
                w.hit(now, member.index)

    async def endpoint(self, m: Member, rep: int) -> None:
        # The server rightly sends only a node's latest endpoints; a second change before
        # the first was seen would leave the first marker unseen, so one at a time per node
        # (the caller marks the node busy when it schedules the change).
        try:
            marker = f"127.0.0.2:{rep % 60000 + 1}"
            expected = self.viewers.get(m.index)
            if expected is None:
                expected = self.viewers[m.index] = self.b.viewers(m.index)
            w = self.fleet.watch(marker, expected)
            await m.node.lite_update([marker])
            await w.wait(self.timeout, f"endpoint change {marker}")
            self.latencies["endpoint"].append(max(w.arrivals))
        finally:
            self.in_flight.discard(m.index)

    async def reconnect(self, m: Member) -> None:
        t0 = time.perf_counter()
        m.open_stream()  # a new stream on the same connection replaces the old one
        await asyncio.wait_for(m.first_map.wait(), self.timeout)
        self.latencies["reconnect"].append(m.first_map_at - t0)
        self.steps["reconnect"].append((m.first_map_at - t0, t0, {
            "sent": m.stream_sent_at - t0, "first_byte": m.first_byte_at - t0}
            | ({"head": m.head_at - t0} if m.head_at else {})))

    async def join_leave(self, rep: int) -> None:
        fleet = self.fleet
        m = Member(fleet, len(fleet.members), f"eph{rep}")
        fleet.members.append(m)
        # Watch before registering: peers hear of the node as soon as it registers.
        w = fleet.watch(f"join-{rep}", self.join_viewers)
        self.joins[m.node.node_key_text] = w
        await m.connect()
        connected = time.perf_counter() - w.started
        await m.register(self.eph_key)
        registered = time.perf_counter() - w.started
        m.open_stream()
        await w.wait(self.timeout, f"join of {m.node.hostname}")
        self.latencies["join"].append(max(w.arrivals))
        self.steps["join"].append((max(w.arrivals), w.started, {
            "connected": connected, "registered": registered,
            "p50_viewer": sorted(w.arrivals)[len(w.arrivals) // 2]}))
        await m.first_map.wait()
        gone = fleet.watch(f"leave-{rep}", self.join_viewers)
        self.removed[m.node_id] = gone
        # Log out: an ephemeral node is deleted at once and its peers told.
        await m.node.register(None, Expiry="1970-01-01T00:02:03Z")
        await gone.wait(self.timeout, f"leave of {m.node.hostname} (id {m.node_id})")
        self.latencies["leave"].append(max(gone.arrivals))
        await m.close_stream()

    async def phase(self, rate: float, events: int) -> dict[str, Any]:
        b, rng = self.b, self.rng
        self.latencies = {"endpoint": [], "reconnect": [], "join": [], "leave": []}
        self.steps = {"reconnect": [], "join": []}
        lags: list[tuple[float, float]] = []  # this process's loop: (when, how late)
        monitor = LagMonitor(asyncio.get_running_loop(),
                             lambda when, lag: lags.append((when, lag)))
        monitor.start()
        pending: set[asyncio.Task[None]] = set()
        cpu0, gen0, bytes0 = b.mark()
        interval = 1.0 / rate
        start = time.perf_counter()
        skipped = 0
        late = 0.0  # how far behind its schedule the generator issued its events, at most
        for i in range(events):
            rep = self.rep = self.rep + 1
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            late = max(late, -delay)
            roll = rng.random()
            if roll < 0.7:
                # Marked busy here, not when the coroutine starts: a generator running behind
                # schedules several events in one go, before any of them runs.
                candidates = rng.sample(self.streaming, min(16, len(self.streaming)))
                member = next((m for m in candidates if m.index not in self.in_flight), None)
                if member is None:
                    skipped += 1  # every sampled node busy: reported, never hidden
                    continue
                self.in_flight.add(member.index)
                coro: Awaitable[None] = self.endpoint(member, rep)
            elif roll < 0.9:
                coro = self.reconnect(rng.choice(self.streaming[1:]))
            else:
                coro = self.join_leave(rep)
            task = asyncio.ensure_future(coro)
            pending.add(task)
            task.add_done_callback(pending.discard)
        issued = time.perf_counter() - start
        results = await asyncio.gather(*pending, return_exceptions=True)
        elapsed = time.perf_counter() - start
        monitor.stop()
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures[:5]:
            log.warning("churn event failed: %r", failure)
        every = [x for v in self.latencies.values() for x in v]
        out: dict[str, Any] = {
            "scenario": "churn", "nodes": self.nodes, "events": events, "policy": b.policy,
            "rate_per_s": rate,
            # Events issued over the time it took to issue them (the schedule's last event is
            # due at (events - 1) / rate); behind_schedule_s says how late the generator got.
            "achieved_rate_per_s": round((events - 1) / max(issued, interval), 1),
            "behind_schedule_s": round(late, 3),
            "completed_in_s": round(elapsed, 1),
            "failed_events": len(failures), "skipped_events": skipped}
        out.update({f"latency_{k}_ms": round(v * 1000, 1) for k, v in percentiles(every).items()})
        for kind, values in self.latencies.items():
            out[f"{kind}_p99_ms"] = round(percentiles(values)["p99"] * 1000, 1)
        out.update(b.figures(cpu0, gen0, bytes0, events))
        out["server_cpu_share_of_2_cores"] = round(out["server_cpu_s"] / elapsed / 2, 3)
        out["backlog_grew"] = backlog_grew(self.latencies["endpoint"]) or bool(failures)
        out["generator_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        out["generator_loop_lag"] = {
            "max_ms": round(max((lag for _, lag in lags), default=0.0) * 1000, 1),
            "over_100ms": sum(1 for _, lag in lags if lag > 0.1),
            "late_s": round(sum(lag for _, lag in lags), 2)}
        for kind, steps in self.steps.items():
            out[f"{kind}_slowest"] = [
                {"ms": round(lat * 1000, 1), "at": round(at, 3)}
                | {k: round(v * 1000, 1) for k, v in parts.items()}
                for lat, at, parts in sorted(steps, key=lambda x: x[0])[-3:]]
        return out
