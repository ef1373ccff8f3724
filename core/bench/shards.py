"""A prototype of the multi-core fan-out (docs/performance.md, "More than one core").

The design: one process owns the state and serialises each delta once; W worker processes each
own a shard of the client connections and do the per-recipient work (seal, frame, write). The
owner hands a delta to a worker as one pipe write, so its cost per event grows with W, not N.

This measures that mechanism with the floor's per-recipient work (bench/floor.py), not the whole
server: N recipients split over W forked workers, each with its own keys and sockets; per event
the owner writes the 62-byte delta to every worker's pipe and waits until all report done. A
forked reader drains the receiving sockets, as the generator does. Reported per W: wall time
per event (owner's first write to the last worker's done), the owner's CPU per event, and the
workers' CPU per event (summed), each from ``time.thread_time`` in its own process.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshscale.bench.floor import MAX_SOCKETS, PLAINTEXT_LEN, _nonce, _pairs, _reader
from meshscale.noise.handshake import MSG_RECORD

_LEN = struct.Struct(">I")
_DONE = struct.Struct(">d")  # the worker's CPU seconds for the event


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = os.read(fd, n - len(buf))
        if not part:
            raise EOFError("pipe closed")
        buf += part
    return buf


def _worker(senders: list[Any], cmd: int, done: int) -> None:
    """In the forked worker: seal and send each delta to this shard's recipients."""
    code = 0
    try:
        keys = [ChaCha20Poly1305(ChaCha20Poly1305.generate_key()) for _ in senders]
        counters = [0] * len(senders)
        while True:
            (n,) = _LEN.unpack(_read_exact(cmd, 4))
            if n == 0:
                break
            delta = _read_exact(cmd, n)
            t0 = time.thread_time()
            for i, sock in enumerate(senders):
                ct = keys[i].encrypt(_nonce(counters[i]), delta, None)
                counters[i] += 1
                sock.send(struct.pack(">BH", MSG_RECORD, len(ct)) + ct)
            os.write(done, _DONE.pack(time.thread_time() - t0))
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run(nodes: int, events: int, workers: int) -> dict[str, Any]:
    socks, receivers = _pairs(min(nodes, MAX_SOCKETS))
    recipients = [socks[i % len(socks)] for i in range(nodes)]
    reader, report = _reader(receivers, socks)
    for r in receivers:
        r.close()
    pids, cmds, dones = [], [], []
    try:
        for w in range(workers):
            cmd_r, cmd_w = os.pipe()
            done_r, done_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(cmd_w)
                os.close(done_r)
                _worker(recipients[w::workers], cmd_r, done_w)
            os.close(cmd_r)
            os.close(done_w)
            pids.append(pid)
            cmds.append(cmd_w)
            dones.append(done_r)
        delta = bytes(PLAINTEXT_LEN)
        walls, owner, shard = [], [], []
        for _ in range(events):
            t0, c0 = time.perf_counter(), time.thread_time()
            for fd in cmds:
                os.write(fd, _LEN.pack(len(delta)) + delta)
            owner.append(time.thread_time() - c0)
            spent = sum(_DONE.unpack(_read_exact(fd, _DONE.size))[0] for fd in dones)
            walls.append(time.perf_counter() - t0)
            shard.append(spent)
            time.sleep(0.05)  # the reader catches up, outside the measured part
    finally:
        for fd in cmds:
            os.write(fd, _LEN.pack(0))
            os.close(fd)
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in dones:
            os.close(fd)
        for sock in socks:
            sock.close()
        os.waitpid(reader, 0)
        os.close(report)
    return {"workers": workers,
            "wall_ms_per_event_median": round(statistics.median(walls) * 1000, 2),
            "owner_cpu_us_per_event": round(statistics.mean(owner) * 1e6, 1),
            "workers_cpu_s_per_event": round(statistics.mean(shard), 4)}


async def shards(nodes: int, events: int, database: str = "sqlite") -> dict[str, Any]:
    """``meshscale bench shards``: the prototype with 1 worker, then one per core."""
    del database
    counts = sorted({1, os.cpu_count() or 1})
    return {"scenario": "shards", "nodes": nodes, "events": max(events, 1),
            "runs": [run(nodes, max(events, 1), w) for w in counts]}
