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
    # Nothing has awaited since the head was read, so no byte after it waits in the reader
    # (``rest`` has them all); from now on the socket's bytes are the worker's.
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
