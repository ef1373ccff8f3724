"""Handing a plain ``/ts2021`` connection from the front door to a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshscale.workers.link import WorkerPool

# What a client that sent over 64 KiB after its plain /ts2021 upgrade request is told when the
# connection would go to a worker. A Noise IK initiator has no transport keys before our
# response, so an honest client sends nothing there.
EARLY_DATA = ("data sent after the /ts2021 upgrade request, before the server's handshake "
              "response; a Tailscale client sends nothing until it has the response")


def early_data(reader: asyncio.StreamReader) -> bool:
    """True if ``reader`` holds bytes beyond what read_head returned (``head.rest``): they would
    not reach a worker (only ``rest`` and the kernel's bytes do), so the caller refuses the
    connection rather than hand it over short of them. asyncio has no public way to see what a
    StreamReader holds; nothing awaits between this check and hand_over's pause_reading, so
    nothing more arrives in between."""
    return len(reader._buffer) > 0  # type: ignore[attr-defined]


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
    # head (at most its 64 KiB read) and travels with the socket; what is still in the kernel
    # stays there for the worker. The caller has refused a connection whose reader buffered
    # more than ``rest`` (early_data, above): those bytes would be lost in between.
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
