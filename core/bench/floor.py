"""The floor of a fan-out: the per-recipient work no design can avoid (issue 19).

A delta reaching N-1 streams must, for each recipient, at least be sealed with that connection's
ChaCha20-Poly1305 key (one Noise record, the same ``cryptography`` AEAD the Noise code uses) and
written to that recipient's socket (one ``send`` system call). Everything else a fan-out costs
(waking a writer, HTTP/2 framing, bookkeeping) is overhead above this floor.

The measurement: ``nodes`` recipients, each with its own key and nonce counter, writing to TCP
connections over loopback (one each, or at most MAX_SOCKETS shared in turn: a run of 10,000
would need 20,000 descriptors in one process); per event, one record of the fanout scenario's
size (a PeersChangedPatch as HTTP/2 DATA frame, 81 bytes on the wire with its Noise header and
tag) is sealed and sent to every recipient. A forked process reads the receiving ends with
epoll, as the generator reads a fan-out, so a send also pays for waking a reader elsewhere.
Figures are CPU seconds of the sending thread (``time.thread_time``), not wall time, so other
jobs on the shared machine move them little.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import time
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshscale.noise.handshake import MSG_RECORD
from meshscale.noise.records import TAG_LEN

# The fanout scenario's delta as the server sends it: HTTP/2 DATA frame header (9 bytes) around
# a length-prefixed zstd frame of {"PeersChangedPatch":[{"NodeID":..,"Endpoints":[..]}]}.
PLAINTEXT_LEN = 81 - 3 - TAG_LEN
MAX_SOCKETS = 4096


def _pairs(count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    senders: list[socket.socket] = []
    receivers: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(listener.getsockname())
            r, _addr = listener.accept()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
            s.setblocking(False)
            r.setblocking(False)
            senders.append(s)
            receivers.append(r)
    finally:
        listener.close()
    return senders, receivers


def _reader(receivers: list[socket.socket], senders: list[socket.socket]) -> tuple[int, int]:
    """Fork a process that reads every receiving socket until it closes (epoll), as the fanout
    generator does: each send then also wakes a reader in another process, as in a fan-out.
    Returns the child's pid and the pipe it reports its byte count on."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        return pid, rfd
    code = 0
    try:
        os.close(rfd)
        for sock in senders:  # the parent's: its closing them must reach us as EOF
            sock.close()
        sel = selectors.DefaultSelector()
        for r in receivers:
            sel.register(r, selectors.EVENT_READ, r)
        got = 0
        left = len(receivers)
        while left:
            for key, _ in sel.select():
                conn: socket.socket = key.data
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    continue
                got += len(data)
                if not data:
                    sel.unregister(conn)
                    left -= 1
        os.write(wfd, str(got).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


def measure(nodes: int, events: int) -> dict[str, Any]:
    """Seal-and-send to ``nodes`` recipients, ``events`` times; CPU per recipient and per
    event. A forked process reads the other ends, as the generator reads a fan-out."""
    senders_, receivers = _pairs(min(nodes, MAX_SOCKETS))
    senders = [senders_[i % len(senders_)] for i in range(nodes)]
    pid, report = _reader(receivers, senders_)
    for r in receivers:
        r.close()  # the reader holds them now
    try:
        keys = [ChaCha20Poly1305(ChaCha20Poly1305.generate_key()) for _ in senders]
        counters = [0] * nodes
        plain = bytes(PLAINTEXT_LEN)
        seal = write = both = 0.0
        for _ in range(events):
            # Sealing alone.
            t0 = time.thread_time()
            records = []
            for i, aead in enumerate(keys):
                ct = aead.encrypt(_nonce(counters[i]), plain, None)
                counters[i] += 1
                records.append(struct.pack(">BH", MSG_RECORD, len(ct)) + ct)
            seal += time.thread_time() - t0
            # Writing alone (the records sealed above).
            t0 = time.thread_time()
            for sock, rec in zip(senders, records, strict=True):
                sock.send(rec)
            write += time.thread_time() - t0
            time.sleep(0.05)  # let the reader catch up, outside the timed parts
            # Both, as a fan-out does them: seal, then write, per recipient.
            t0 = time.thread_time()
            for i, sock in enumerate(senders):
                ct = keys[i].encrypt(_nonce(counters[i]), plain, None)
                counters[i] += 1
                sock.send(struct.pack(">BH", MSG_RECORD, len(ct)) + ct)
            both += time.thread_time() - t0
            time.sleep(0.05)
    finally:
        for sock in senders_:
            sock.close()
        _, status = os.waitpid(pid, 0)
        with os.fdopen(report) as f:
            reported = f.read()
    if status != 0 or not reported:
        raise RuntimeError("the floor's reader process failed")
    per = nodes * events
    return {
        "scenario": "floor",
        "nodes": nodes,
        "events": events,
        "sockets": len(receivers),
        "record_bytes": 3 + PLAINTEXT_LEN + TAG_LEN,
        "bytes_received": int(reported),
        "seal_us_per_recipient": round(seal / per * 1e6, 2),
        "write_us_per_recipient": round(write / per * 1e6, 2),
        "floor_us_per_recipient": round(both / per * 1e6, 2),
        # One event reaching every other node: what a fan-out at this N cannot go below.
        "floor_cpu_s_per_event": round(both / events * (nodes - 1) / nodes, 4),
    }


async def floor(nodes: int, events: int, database: str = "sqlite") -> dict[str, Any]:
    """``meshscale bench floor``: no server; ``database`` is accepted for the common CLI."""
    del database
    return measure(nodes, max(events, 1))
