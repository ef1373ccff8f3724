"""Relay benchmark for the embedded DERP server: how many packets and MB/s one process relays.

The server (the real plugin code path: DerpService, TLS listener, relay) runs in a child process
so its CPU time is measured apart from the load generator. In this process, pairs of our own
DERP clients (plugins/derp/client.py) connect over TLS to 127.0.0.1; in each pair one client
sends packets to the other, keeping at most ``--window`` packets in flight so the relay's
drop-oldest queues are measured at their delivery rate, not their drop rate.

    python benchmarks/derp_bench.py                       # 5 s, 1 pair, 1200-byte packets
    python benchmarks/derp_bench.py --seconds 10 --size 200 --pairs 4 --json

Bounded: every run stops after ``--seconds`` (at most 60) plus a few seconds of set-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from meshscale.plugins.derp.frames import FrameType

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- the server side (child process) -----------------------------------------------------------


class _Context:
    def __init__(self, config: Any, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir

    def node_key_known(self, node_key: bytes) -> bool:
        return True

    def derp_map(self) -> Mapping[str, Any]:
        return {}

    def refresh_derp_map(self) -> None:
        return None

    def stats(self) -> Mapping[str, float]:
        return {}

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, name=name)


async def serve(data_dir: str) -> None:
    from meshscale.config import Config, DerpConfig, DerpServerConfig
    from meshscale.configvalues import HostPort
    from meshscale.plugins.derp.service import DerpService

    config = Config(
        data_dir=data_dir,
        derp=DerpConfig(server=DerpServerConfig(
            tls_listen_addr=HostPort("127.0.0.1:0"), verify_clients=False
        )),
    )
    svc = DerpService(config)
    await svc.start(_Context(config, Path(data_dir)))  # type: ignore[arg-type]
    assert svc.relay is not None and svc.cert is not None
    print(json.dumps({"port": svc.tls_port, "pin": svc.cert.cert_name}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            s = svc.relay.stats
            print(json.dumps({
                "packets_sent": s.packets_sent, "bytes_sent": s.bytes_sent,
                "dropped_queue_full": s.dropped_queue_full,
                "dropped_unknown_dest": s.dropped_unknown_dest,
            }), flush=True)
    await svc.stop()


# -- the load generator ------------------------------------------------------------------------


async def run_pair(
    port: int, pin: str, size: int, window: int, stop_at: float, counters: dict[str, int]
) -> None:
    from meshscale.plugins.derp.client import DerpClient, insecure_client_context

    ctx = insecure_client_context()
    a = await DerpClient.connect("127.0.0.1", port, ssl_context=ctx, expect_sha256=pin)
    b = await DerpClient.connect("127.0.0.1", port, ssl_context=ctx, expect_sha256=pin)
    packet = os.urandom(size)
    state = {"sent": 0, "received": 0}
    more = asyncio.Event()

    async def receive() -> None:
        while True:
            for frame in await b.recv_batch():
                if frame.type == FrameType.RECV_PACKET:
                    state["received"] += 1
                    counters["packets"] += 1
                    counters["bytes"] += len(frame.payload) - 32
            more.set()

    async def send() -> None:
        while time.monotonic() < stop_at:
            room = window - (state["sent"] - state["received"])
            if room <= 0:
                more.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(more.wait(), 0.5)
                if window - (state["sent"] - state["received"]) <= 0:
                    state["sent"] = state["received"]  # some were dropped: reopen the window
                continue
            for _ in range(room):
                a.send_nowait(b.public_key, packet)
            state["sent"] += room
            await a.writer.drain()

    recv_task = asyncio.create_task(receive())
    try:
        await send()
        await asyncio.sleep(0.2)  # let the last in-flight packets land
    finally:
        recv_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await recv_task
        await a.close()
        await b.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        child = subprocess.Popen(  # noqa: ASYNC220 - set-up, before any measurement
            [sys.executable, __file__, "--serve", data_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            hello = json.loads(child.stdout.readline())
            counters = {"packets": 0, "bytes": 0}
            start = time.monotonic()
            stop_at = start + args.seconds
            cpu0, self0 = cpu_seconds(child.pid), time.process_time()
            await asyncio.gather(*(
                run_pair(hello["port"], hello["pin"], args.size, args.window, stop_at, counters)
                for _ in range(args.pairs)
            ))
            elapsed = time.monotonic() - start
            server_cpu = cpu_seconds(child.pid) - cpu0
            client_cpu = time.process_time() - self0
            child.stdin.write("stats\n")
            child.stdin.flush()
            stats = json.loads(child.stdout.readline())
        finally:
            child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    mb = counters["bytes"] / 1e6
    return {
        "pairs": args.pairs,
        "packet_bytes": args.size,
        "window": args.window,
        "seconds": round(elapsed, 2),
        "packets_relayed": counters["packets"],
        "packets_per_second": round(counters["packets"] / elapsed),
        "megabytes_per_second": round(mb / elapsed, 2),
        "server_cpu_seconds": round(server_cpu, 2),
        "server_cpu_utilisation": round(server_cpu / elapsed, 2),
        "server_cpu_seconds_per_mb": round(server_cpu / mb, 4) if mb else None,
        "server_cpu_us_per_packet": round(1e6 * server_cpu / counters["packets"], 1)
        if counters["packets"] else None,
        "client_cpu_seconds": round(client_cpu, 2),
        "server_dropped_queue_full": stats["dropped_queue_full"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--size", type=int, default=1200, help="packet bytes (max 65536)")
    p.add_argument("--pairs", type=int, default=1, help="sender/receiver pairs")
    p.add_argument("--window", type=int, default=256, help="packets in flight per pair")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--serve", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    args.seconds = min(max(args.seconds, 0.5), 60.0)
    args.size = min(max(args.size, 1), 65536)
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
