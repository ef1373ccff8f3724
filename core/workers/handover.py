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


class CountingReader(asyncio.StreamReader):
    """The front door's reader: counts the bytes its transport fed it, so ``early_data`` can
    tell whether more arrived than the head's reads took. asyncio has no public way to see what
    a StreamReader holds; counting in ``feed_data`` (what its protocol calls with each chunk)
    needs none. One addition per chunk received."""

    received = 0

    # typeshed types ``data`` as bytearray.extend's argument; asyncio's protocols feed bytes.
    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        self.received += len(data)
        super().feed_data(data)


def early_data(reader: CountingReader, consumed: int) -> bool:
    """True if ``reader`` holds bytes beyond the ``consumed`` that read_head read (its
    ``head.raw``, of which ``head.rest`` is past the head): they would not reach a worker (only
    ``rest`` and the kernel's bytes do), so the caller refuses the connection rather than hand it
    over short of them. Nothing awaits between this check and hand_over's pause_reading, so
    nothing more arrives in between."""
    return reader.received > consumed


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
