"""Soak under attack (issue 11): legitimate nodes register and stream while strangers attack.

From 127.0.0.2: idle connections that never send a byte, slow-loris connections trickling a
request head, rapid-reset connections (HEADERS + RST_STREAM pairs as fast as allowed) and body
hoarders (64 streams of unfinished bodies). From 127.0.0.1, meanwhile: legitimate simulated
nodes connect, register, open their map streams, and must all see one another's updates.

Loopback only; every attacker is bounded in count, and the whole run in time. Attackers that
are refused wait a moment before trying again, so the generator does not become the bottleneck
of a machine it shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h2.errors
import h2.events
import h2.exceptions

from meshscale.bench.fleet import Fleet, Member, percentiles
from meshscale.bench.harness import Bench, settle
from meshscale.simclient import ControlConnection

ATTACKER = "127.0.0.2"


@dataclass
class Attack:
    """Shared by all attackers: a stop flag and what they saw."""

    host: str
    port: int
    server_pub: bytes
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    seen: Counter[str] = field(default_factory=Counter)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, local_addr=(ATTACKER, 0))

    async def outcome(self, reader: asyncio.StreamReader, kind: str) -> None:
        """Wait until the server ends the connection (or the run ends); count how it did."""
        first = b""
        with contextlib.suppress(ConnectionError):
            first = await reader.read(64)
            while await reader.read(4096):
                pass
        status = first[9:12].decode("ascii", "replace") if first.startswith(b"HTTP/") else ""
        self.seen[f"{kind}_{status or 'closed'}"] += 1

    async def idle(self) -> None:
        """Connect and send nothing."""
        while not self.stop.is_set():
            try:
                reader, writer = await self.open()
            except OSError:
                self.seen["idle_connect_failed"] += 1
                await asyncio.sleep(1.0)
                continue
            self.seen["idle_connections"] += 1
            waiting = asyncio.create_task(self.outcome(reader, "idle"))
            stopping = asyncio.create_task(self.stop.wait())
            await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            stopping.cancel()
            writer.close()
            await asyncio.sleep(1.0)  # refused or timed out: back off a little

    async def slow_loris(self, interval: float = 2.0) -> None:
        """Trickle a request head, one byte per ``interval``."""
        head = b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 4000
        while not self.stop.is_set():
            try:
                reader, writer = await self.open()
            except OSError:
                await asyncio.sleep(1.0)
                continue
            self.seen["loris_connections"] += 1
            waiting = asyncio.create_task(self.outcome(reader, "loris"))
            for byte in head:
                if waiting.done() or self.stop.is_set():
                    break
                with contextlib.suppress(ConnectionError):
                    writer.write(bytes([byte]))
                await asyncio.sleep(interval)
            waiting.cancel()
            writer.close()

    async def rapid_reset(self) -> None:
        """HEADERS + RST_STREAM pairs until the server says GOAWAY, then again."""
        while not self.stop.is_set():
            conn = _Attacker()
            try:
                await conn.connect(self.host, self.port, self.server_pub)
            except (OSError, ConnectionError):
                await asyncio.sleep(1.0)
                continue
            try:
                while not conn.closed.is_set() and not self.stop.is_set():
                    for _ in range(20):
                        sid = conn.h2.get_next_available_stream_id()
                        conn.h2.send_headers(sid, _HEADERS, end_stream=True)
                        conn.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                        self.seen["reset_pairs_sent"] += 1
                    conn._flush()
                    await conn.writer.drain()
                    await asyncio.sleep(0.005)
            except (h2.exceptions.ProtocolError, ConnectionError):
                pass
            await asyncio.wait_for(conn.closed.wait(), 10)
            self.seen[f"reset_goaway_{conn.goaway}"] += 1
            await conn.close()
            await asyncio.sleep(0.5)

    async def hoarder(self) -> None:
        """64 streams, each pushing body bytes and never ending; measures what got through."""
        chunk = b"x" * 16384
        while not self.stop.is_set():
            conn = _Attacker()
            try:
                await conn.connect(self.host, self.port, self.server_pub)
            except (OSError, ConnectionError):
                await asyncio.sleep(1.0)
                continue
            sids = [conn._headers("/machine/register", "POST") for _ in range(64)]
            sent = 0
            with contextlib.suppress(h2.exceptions.ProtocolError, ConnectionError):
                while not self.stop.is_set() and not conn.closed.is_set():
                    open_sids = [s for s in sids if not conn.replies[s].done.is_set()]
                    if not open_sids:
                        break
                    for sid in open_sids:
                        room = min(conn.h2.local_flow_control_window(sid), len(chunk))
                        if room > 0:
                            conn.h2.send_data(sid, chunk[:room])
                            sent += room
                    conn._flush()
                    await conn.writer.drain()
                    self.seen["hoard_max_bytes_one_connection"] = max(
                        self.seen["hoard_max_bytes_one_connection"], sent)
                    await asyncio.sleep(0.05)
            for sid in sids:
                self.seen[f"hoard_stream_{conn.replies[sid].status or 'open'}"] += 1
            await conn.close()


_HEADERS = [(":method", "POST"), (":scheme", "https"), (":authority", "x"),
            (":path", "/machine/register")]


class _Attacker(ControlConnection):
    """A control connection that remembers the GOAWAY it got."""

    goaway = "none"

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = h2.errors.ErrorCodes(int(ev.error_code or 0)).name
        super()._event(ev)


def _attack_process(host: str, port: int, server_pub: bytes, sizes: dict[str, int],
                    stop: Any, results: Any) -> None:
    """The attackers, in a process of their own: their connection churn must not slow the
    legitimate nodes' event loop, or their latency would measure the generator, not the server.
    """

    async def main() -> None:
        attack = Attack(host, port, server_pub)
        tasks = [asyncio.create_task(attack.idle()) for _ in range(sizes["idle"])]
        tasks += [asyncio.create_task(attack.slow_loris()) for _ in range(sizes["loris"])]
        tasks += [asyncio.create_task(attack.rapid_reset()) for _ in range(sizes["resetters"])]
        tasks += [asyncio.create_task(attack.hoarder()) for _ in range(sizes["hoarders"])]
        await asyncio.to_thread(stop.wait)  # a process-shared event: waited for in a thread
        attack.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        results.put(dict(attack.seen))

    asyncio.run(main())


async def soak(nodes: int = 200, events: int = 0, idle: int = 2000, loris: int = 200,
               resetters: int = 4, hoarders: int = 4, per_ip: int | None = None,
               ceiling: int | None = None, ramp: float = 5.0,
               database: str = "sqlite") -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if per_ip is not None:
        limits["max_connections_per_ip"] = per_ip
    if ceiling is not None:
        limits["max_connections"] = ceiling
    async with Bench(["sqlite"], {"limits": limits} if limits else None, database,
                     fleet=False) as b:
        fleet = b.fleet
        assert fleet is not None
        key = b.key("soak")
        from meshscale.simhandshake import fetch_server_key  # noqa: PLC0415

        fleet.server_pub = await fetch_server_key("127.0.0.1", b.server.port)
        cpu0 = b.server.cpu()
        ctx = multiprocessing.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        sizes = {"idle": idle, "loris": loris, "resetters": resetters, "hoarders": hoarders}
        attackers = ctx.Process(target=_attack_process, daemon=True, args=(
            "127.0.0.1", b.server.port, fleet.server_pub, sizes, stop, results))
        attackers.start()
        try:
            await asyncio.sleep(ramp)  # let the attack reach its full size first
            legit = await _legitimate(fleet, nodes, key)
        finally:
            stop.set()
            seen: dict[str, int] = await asyncio.to_thread(results.get, True, 60)
            attackers.join(10)
        log_text = (b.server.dir / "server.log").read_text(errors="replace")
        return {
            "scenario": "soak", "legit_nodes": nodes, **legit,
            "attackers": sizes, "limits": limits or "defaults", "attacker_saw": seen,
            "server_cpu_s": round(b.server.cpu() - cpu0, 2),
            "server_rss_mb": round(b.server.rss() / 2**20, 1),
            "server_log_bytes": len(log_text.encode()),
            "server_log_tracebacks": log_text.count("Traceback"),
        }


async def _legitimate(fleet: Fleet, nodes: int, key: str) -> dict[str, Any]:
    """Legitimate nodes, 20 at a time: connect (Noise, HTTP/2), register, stream; then check
    that one node's update reaches every other one."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    members = [Member(fleet, i, f"legit{i}") for i in range(nodes)]
    sem = asyncio.Semaphore(20)

    async def join(m: Member) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                await m.connect()
                await m.register(key)
            except Exception as exc:  # counted and reported: the soak's verdict
                failures[type(exc).__name__] += 1
                return
            latencies.append(time.perf_counter() - t0)
            fleet.members.append(m)

    t_join = time.perf_counter()
    await asyncio.gather(*(join(m) for m in members))
    join_s = time.perf_counter() - t_join
    streams_s = await fleet.open_streams(fleet.members, timeout=120)
    await settle(fleet)
    marker = "127.0.0.1:4242"
    sender = fleet.members[0]
    w = fleet.watch(marker, len(fleet.members) - 1)
    await sender.node.lite_update([marker])
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(w.done.wait(), 30)
    await settle(fleet)  # the sender may see its own change too: count the others
    pct = percentiles(latencies)
    return {
        "legit_registered": len(latencies), "legit_failed": dict(failures),
        "register_p50_ms": round(pct["p50"] * 1000, 1),
        "register_p99_ms": round(pct["p99"] * 1000, 1),
        "register_max_ms": round(pct["max"] * 1000, 1),
        "all_joined_s": round(join_s, 2), "all_full_maps_s": round(streams_s, 2),
        "update_reached_peers": len(w.seen_by - {sender.index}),
        "update_expected_peers": len(fleet.members) - 1,
        "update_latency_max_ms": round(max(w.arrivals, default=0) * 1000, 1),
    }
