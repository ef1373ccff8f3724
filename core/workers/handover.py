"""Handing a plain ``/ts2021`` connection from the front door to a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshscale.workers.link import WorkerPool


async def hand_over(pool: WorkerPool, init: bytes, rest: bytes, writer: asyncio.StreamWriter,
                    on_busy: Callable[[bool], None] | None,
                    on_success: Callable[[], None] | None) -> bool:
    """Pass the connection to a worker, which does the Noise handshake and everything after
    (docs/architecture.md, "Connection workers"); then wait until the worker reports it closed,
    so the connection keeps its slot in the front door's table, and eviction or shutdown (which
    cancel the waiting task) reach it. False: the caller serves it (TLS on the socket, no worker
    able to take it now)."""
    transport = writer.transport
    sock = writer.get_extra_info("socket")
    if (sock is None or writer.get_extra_info("ssl_object") is not None
            or not isinstance(transport, asyncio.Transport)):
        return False
    # From now on the socket's bytes are the worker's. ``rest`` is what read_head read past the
    # head; the reader may buffer more if the client sent over 64 KiB at once, and those bytes
    # are dropped here. No honest client sends them: a Noise IK initiator has no transport keys
    # before our response, so such bytes can only be garbage, which breaks only that client's
    # own connection (its records fail to open), as they would in the owner.
    transport.pause_reading()
    remote = pool.adopt(sock, init, rest, on_busy, on_success)
    if remote is None:
        transport.resume_reading()
        return False
    transport.abort()  # closes our descriptor only: the worker holds its own
    try:
        await remote.gone
    except asyncio.CancelledError:
        remote.abort()
        raise
    return True
