"""What every benchmark scenario shares: a server process with a fleet, and the waits and figures.

``Bench`` starts one meshscale server process on 127.0.0.1 (SQLite, or a throw-away
PostgreSQL), a fleet of simulated nodes in this process, registers them (one user's under
allow-all, the restrictive tailnet of tailnets.py otherwise), and reports the common figures
(server and generator CPU, bytes, RSS, the workers'). ``settle`` and ``drained`` wait for a
fleet to go quiet; ``backlog_grew`` reads a latency series. The scenarios themselves are
``scenarios.py`` (storm, fanout, memory, register), ``churn.py`` and ``policychange.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from meshscale.bench import kernel, leanconn
from meshscale.bench.fleet import Fleet
from meshscale.bench.pgserver import PgServer
from meshscale.bench.profile import Sampler
from meshscale.bench.serverproc import ServerProcess, cpu_seconds
from meshscale.bench.tailnets import POLICIES, restrictive_policy, role, sees, user_name, users_for


def own_cpu() -> float:
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
        self._kernel0: dict[str, Any] = {}
        self._server0 = (0.0, 0.0, 0)
        self._reads0 = 0
        self._tcpwatch: kernel.TcpMemWatch | None = None

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
        self._kernel0 = kernel.snapshot()
        self._tcpwatch = kernel.TcpMemWatch()
        self._tcpwatch.start()
        self._reads0 = leanconn.reads[0]
        self._server0 = self.server.cpu_split()
        return self.server.cpu(), own_cpu(), self.fleet.bytes_received

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
        user, sys_, minflt = self.server.cpu_split()
        machine = kernel.delta(self._kernel0) if self._kernel0 else {}
        if self._tcpwatch is not None:
            machine |= self._tcpwatch.stop()
            self._tcpwatch = None
        return sampled | machine | {
            "server_user_s": round(user - self._server0[0], 3),
            "server_sys_s": round(sys_ - self._server0[1], 3),
            "server_minflt": minflt - self._server0[2],
            "generator_reads": leanconn.reads[0] - self._reads0,
            "server_cpu_s": round(cpu, 3),
            "server_cpu_s_per_event": round(cpu / max(events, 1), 4),
            "generator_cpu_s": round(own_cpu() - gen0, 3),
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


def backlog_grew(latencies: list[float]) -> bool:
    """A backlog shows as latencies that keep rising: last third clearly above the first."""
    if len(latencies) < 9:
        return False
    third = len(latencies) // 3
    first = sorted(latencies[:third])[third // 2]
    last = sorted(latencies[-third:])[third // 2]
    return last > 2 * first and last - first > 0.05
