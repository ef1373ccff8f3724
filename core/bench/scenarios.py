"""Benchmark scenarios: storm, fanout, policy, churn, memory (issue 6).

Each starts its own server process on 127.0.0.1, builds a fleet of simulated nodes in this
process, measures, stops everything, and returns a flat dict of figures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable
from typing import Any

from meshscale.bench.fleet import Fleet, Member, Watch, percentiles
from meshscale.bench.pgserver import PgServer
from meshscale.bench.profile import Sampler
from meshscale.bench.serverproc import ServerProcess, cpu_seconds
from meshscale.bench.tailnets import POLICIES, restrictive_policy, role, sees, user_name, users_for

log = logging.getLogger(__name__)

SELF_POLICY = {"acls": [{"action": "accept", "src": ["autogroup:member"],
                         "dst": ["autogroup:self:*"]}]}


def _own_cpu() -> float:
    import os  # noqa: PLC0415

    return cpu_seconds(os.getpid())


class Bench:
    """Server + fleet with the common set-up and the common figures.

    ``database="postgres"`` stores in a throw-away PostgreSQL (fsync on, as deployed) started
    for the run instead of SQLite.
    """

    def __init__(self, plugins: list[str], extra: dict[str, Any] | None = None,
                 database: str = "sqlite", fleet: bool = True,
                 policy: str = "allow-all", profile: str | None = None,
                 workers: int = 0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r} ({' or '.join(POLICIES)})")
        self.policy = policy
        if policy == "restrictive" and "policy" not in plugins:
            plugins = [*plugins, "policy"]
        self.plugins = [database if p == "sqlite" else p for p in plugins]
        self.extra = dict(extra or {})
        self.workers = workers
        self._workers0: dict[int, float] = {}
        if workers:
            self.extra["workers"] = workers
        if "policy" in self.plugins:
            self.extra.setdefault("policy", {"mode": "database"})
        if fleet and "limits" not in self.extra:
            # The simulated fleet connects from one address (127.0.0.1): the per-source cap,
            # meant for strangers, would refuse it past 512 nodes. These scenarios measure the
            # control path, so they lift the caps; soak measures the caps and keeps them.
            self.extra["limits"] = {"max_connections_per_ip": 1_000_000,
                                    "max_connections": 1_000_000}
        self.database = database
        self.pg: PgServer | None = None
        self._server: ServerProcess | None = None
        self.fleet: Fleet | None = None
        self.size = 0  # members populate() registered
        self.first_start_s = 0.0
        self.sampler = Sampler(profile) if profile else None

    @property
    def server(self) -> ServerProcess:
        assert self._server is not None, "use the bench inside 'async with'"
        return self._server

    async def __aenter__(self) -> Bench:
        if self.database == "postgres":
            self.pg = PgServer(durable=True)
            self.pg.start()
            self.pg.create_database("meshscale_bench")
            params = self.pg.params()
            self.extra["database"] = {"type": "postgres", "postgres": {
                "host": params["host"], "port": params["port"], "user": params["user"],
                "name": "meshscale_bench"}}
        elif self.database != "sqlite":
            raise ValueError(f"unknown database {self.database!r} (sqlite or postgres)")
        self._server = ServerProcess(self.plugins, self.extra)
        t0 = time.perf_counter()
        self.server.start()
        self.first_start_s = time.perf_counter() - t0
        self.fleet = Fleet("127.0.0.1", self.server.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.fleet is not None:
            await self.fleet.close()
        if self._server is not None:
            self._server.remove()
        if self.pg is not None:
            self.pg.close()

    def key(self, user: str, **opts: Any) -> str:
        admin = self.server.admin
        if not any(u["name"] == user for u in admin.call("GET", "/v1/users")):
            admin.call("POST", "/v1/users", {"name": user})
        body = {"user": user, "reusable": True, "expiration": 0, **opts}
        key: str = admin.call("POST", "/v1/preauthkeys", body)["key"]
        return key

    def tagged_key(self, tag: str) -> str:
        key: str = self.server.admin.call(
            "POST", "/v1/preauthkeys",
            {"user": None, "reusable": True, "expiration": 0, "tags": [tag]})["key"]
        return key

    async def populate(self, nodes: int, name: str) -> None:
        """Register ``nodes`` members: one user's under allow-all, or the restrictive
        tailnet's users and tagged servers (tailnets.py) under its policy."""
        assert self.fleet is not None
        self.size = nodes
        if self.policy == "allow-all":
            await self.fleet.add(nodes, self.key(name))
            return
        admin = self.server.admin
        admin.call("PUT", "/v1/policy", {"policy": json.dumps(restrictive_policy(nodes))})
        keys = {}
        for u in range(users_for(nodes)):
            admin.call("POST", "/v1/users", {"name": user_name(u)})
            keys[u] = admin.call("POST", "/v1/preauthkeys", {
                "user": user_name(u), "reusable": True, "expiration": 0})["key"]
        tags = {r.tag: self.tagged_key(r.tag) for r in map(role, range(min(nodes, 64)))
                if r.server}

        def key(i: int) -> str:
            r = role(i)
            return tags[r.tag] if r.server else str(keys[r.user])

        await self.fleet.add(nodes, "", keys=key)

    def viewers(self, member: int, cut: bool = False) -> int:
        """How many other members see ``member`` (all of them under allow-all)."""
        if self.policy == "allow-all":
            return self.size - 1
        return sum(1 for j in range(self.size) if sees(j, member, cut))

    def mark(self) -> tuple[float, float, int]:
        """The measured part starts: the counters figures() subtracts (and the profiler)."""
        assert self.fleet is not None
        if self.sampler is not None:
            self.sampler.start(self.server.pid)
        self._workers0 = self.server.worker_cpu()
        return self.server.cpu(), _own_cpu(), self.fleet.bytes_received

    def figures(self, cpu0: float, gen0: float, bytes0: int, events: int) -> dict[str, Any]:
        assert self.fleet is not None
        cpu = self.server.cpu() - cpu0
        sampled = self.sampler.stop() if self.sampler is not None else {}
        if self.workers:
            # The owner's CPU is server_cpu_s (the figure that shows how far the design
            # scales); each worker's is beside it, and the sum of all.
            now = self.server.worker_cpu()
            each = [round(now[p] - self._workers0.get(p, 0.0), 3) for p in sorted(now)]
            mem = self.server.worker_rss()
            sampled = sampled | {
                "workers_rss_mb": [round(mem[p][0] / 2**20, 1) for p in sorted(mem)],
                "workers_peak_rss_mb": [round(mem[p][1] / 2**20, 1) for p in sorted(mem)],
                "workers": self.workers,
                "workers_cpu_s": each,
                "all_processes_cpu_s": round(cpu + sum(each), 3),
                "all_processes_cpu_s_per_event": round((cpu + sum(each)) / max(events, 1), 4),
            }
        return sampled | {
            "server_cpu_s": round(cpu, 3),
            "server_cpu_s_per_event": round(cpu / max(events, 1), 4),
            "generator_cpu_s": round(_own_cpu() - gen0, 3),
            "bytes_received": self.fleet.bytes_received - bytes0,
            "bytes_per_event": (self.fleet.bytes_received - bytes0) // max(events, 1),
            "server_rss_mb": round(self.server.rss() / 2**20, 1),
            "server_peak_rss_mb": round(self.server.peak_rss() / 2**20, 1),
        }


async def settle(fleet: Fleet, quiet: float = 0.5, limit: float = 60.0) -> None:
    """Wait until no map message arrived for ``quiet`` seconds (joins' deltas drained)."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        total = sum(m.messages for m in fleet.members)
        if total == last:
            return
        last = total
        await asyncio.sleep(quiet)


async def drained(fleet: Fleet, window: float = 2.0, slack: int = 256 * 1024,
                  limit: float = 300.0) -> None:
    """Wait until fewer than ``slack`` bytes arrive in ``window`` seconds (keep-alives of
    10,000 streams are about 20 KB/s; one full map in flight is 100 KB or more)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = fleet.bytes_received
        await asyncio.sleep(window)
        if fleet.bytes_received - before < slack:
            return


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
        out["backlog_grew"] = _grew(latencies)
        return out


def _grew(latencies: list[float]) -> bool:
    """A backlog shows as latencies that keep rising: last third clearly above the first."""
    if len(latencies) < 9:
        return False
    third = len(latencies) // 3
    first = sorted(latencies[:third])[third // 2]
    last = sorted(latencies[-third:])[third // 2]
    return last > 2 * first and last - first > 0.05


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


# -- churn ----------------------------------------------------------------------------------


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

    async def join_leave(self, rep: int) -> None:
        fleet = self.fleet
        m = Member(fleet, len(fleet.members), f"eph{rep}")
        fleet.members.append(m)
        # Watch before registering: peers hear of the node as soon as it registers.
        w = fleet.watch(f"join-{rep}", self.join_viewers)
        self.joins[m.node.node_key_text] = w
        await m.connect()
        await m.register(self.eph_key)
        m.open_stream()
        await w.wait(self.timeout, f"join of {m.node.hostname}")
        self.latencies["join"].append(max(w.arrivals))
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
        out["backlog_grew"] = _grew(self.latencies["endpoint"]) or bool(failures)
        return out


# -- policy ---------------------------------------------------------------------------------


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
        cpu0, gen0, bytes0 = b.server.cpu(), _own_cpu(), fleet.bytes_received
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


# -- register: storage-bound figures ------------------------------------------------------------


async def register(nodes: int, events: int, database: str = "sqlite") -> dict[str, Any]:
    """N nodes register with one reusable key, 64 at a time (each registration is one storage
    transaction): registrations per second. Then the server is stopped and started again over
    the N stored nodes: cold-start seconds, from process start until it answers its socket."""
    async with Bench(["sqlite"], database=database) as b:
        assert b.fleet is not None
        key = b.key("reg")
        cpu0, gen0 = b.server.cpu(), _own_cpu()
        t0 = time.perf_counter()
        await b.fleet.add(nodes, key)
        seconds = time.perf_counter() - t0
        cpu = b.server.cpu() - cpu0
        gen = _own_cpu() - gen0
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

