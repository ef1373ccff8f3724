"""The floor of a fan-out: the per-recipient work no design can avoid (issue 19).

A delta reaching N-1 streams must, for each recipient, at least be sealed with that connection's
ChaCha20-Poly1305 key (one Noise record, the same ``cryptography`` AEAD the Noise code uses) and
written to that recipient's socket (one ``send`` system call). Everything else a fan-out costs
(waking a writer, HTTP/2 framing, bookkeeping) is overhead above this floor.

The measurement: ``nodes`` recipients, each with its own key and nonce counter, writing to TCP
connections over loopback (one each, or at most MAX_SOCKETS shared in turn: a run of 10,000
would need 20,000 descriptors in one process); per event, one record of the fanout scenario's
size (a PeersChangedPatch as HTTP/2 DATA frame, 81 bytes on the wire with its Noise header and
tag) is sealed and sent to every recipient. The receiving ends are drained between events,
outside the timed part. Figures are CPU seconds of the sending thread (``time.thread_time``),
not wall time, so other jobs on the shared machine move them little.
"""

from __future__ import annotations

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


def _drain(receivers: list[socket.socket]) -> int:
    got = 0
    for r in receivers:
        while True:
            try:
                data = r.recv(65536)
            except BlockingIOError:
                break
            got += len(data)
            if not data:
                break
    return got


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


def measure(nodes: int, events: int) -> dict[str, Any]:
    """Seal-and-send to ``nodes`` sockets, ``events`` times; CPU per recipient and per event."""
    pairs = _pairs(min(nodes, MAX_SOCKETS))
    senders = [pairs[0][i % len(pairs[0])] for i in range(nodes)]
    receivers = pairs[1]
    try:
        keys = [ChaCha20Poly1305(ChaCha20Poly1305.generate_key()) for _ in senders]
        counters = [0] * nodes
        plain = bytes(PLAINTEXT_LEN)
        seal = write = both = 0.0
        sent = 0
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
            for s, rec in zip(senders, records, strict=True):
                s.send(rec)
            write += time.thread_time() - t0
            sent += _drain(receivers)
            # Both, as a fan-out does them: seal, then write, per recipient.
            t0 = time.thread_time()
            for i, s in enumerate(senders):
                ct = keys[i].encrypt(_nonce(counters[i]), plain, None)
                counters[i] += 1
                s.send(struct.pack(">BH", MSG_RECORD, len(ct)) + ct)
            both += time.thread_time() - t0
            sent += _drain(receivers)
    finally:
        for sock in (*pairs[0], *receivers):
            sock.close()
    per = nodes * events
    return {
        "scenario": "floor",
        "nodes": nodes,
        "events": events,
        "sockets": len(receivers),
        "record_bytes": 3 + PLAINTEXT_LEN + TAG_LEN,
        "bytes_received": sent,
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
