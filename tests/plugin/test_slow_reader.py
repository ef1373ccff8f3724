"""A map stream whose client stops reading holds a bounded amount, then gets one full map.

Deltas to a waiting stream are written at once by the mapper (issue 19's direct writer) only
while the connection takes them without waiting; after that they queue for the stream's task,
at most MAX_BACKLOG of them, and past that the queue is dropped for one fresh full map.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from meshscale.mapper.frames import Message
from meshscale.mapper.session import MAX_BACKLOG
from meshscale.server import Server
from tests.plugin.simnodes import join

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("workers", [0, 2])
async def test_a_stuck_reader_is_bounded_then_resynced(
        meshscale_server_factory: Callable[..., Any], workers: int) -> None:
    # With connection workers the worker reports the stream backed up (BACKED), and the
    # owner's session queues from then on, as it does for a slow connection of its own.
    server: Server = await meshscale_server_factory(plugins=["sqlite"], workers=workers)
    assert server.state is not None and server.mapper is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    node, stream, first = await join(server, key, "slow")
    assert stream is not None and first is not None
    session = server.mapper.sessions[first["Node"]["ID"]]

    node.conn.writer.transport.pause_reading()  # the client reads nothing more
    pushed = 0
    # Incompressible deltas of about 4 KB: the client's windows (4 MiB) and the sockets'
    # buffers fill long before this many.
    while not session.overflows and pushed < 20_000:
        session.push(Message.of({"Health": [os.urandom(2048).hex()]}))
        pushed += 1
        assert len(session.queue) <= MAX_BACKLOG
        if pushed % 16 == 0:
            await asyncio.sleep(0)  # the stream's task writes what is queued, if it can
    assert session.overflows == 1, f"no overflow after {pushed} deltas"
    assert session.needs_full and not session.queue
    for _ in range(100):  # more deltas now only wait for the full map: nothing is kept
        session.push(Message.of({"Health": ["x"]}))
    assert not session.queue

    node.conn.writer.transport.resume_reading()
    written = 0
    while True:  # what was written before, then the fresh full map
        msg = await stream.next(timeout=30)
        assert msg is not None, "stream ended"
        if "Peers" in msg or "DERPMap" in msg:
            break
        written += "Health" in msg
    assert 0 < written < pushed
    assert msg["Node"]["ID"] == first["Node"]["ID"]
    assert session.sent["full"] == 2
