"""Clients that do not take their full map cannot hold the other streams' full maps back.

Full maps are built and written a few at a time (poll.FULL_MAPS_AT_ONCE), which bounds the
memory of a storm; a stream holds its place only until poll.full_map_deadline, then its
connection is dropped with whatever it had not sent (issue 19).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h2.settings
import pytest

from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.plugin.simnodes import join

pytestmark = pytest.mark.asyncio


async def _shut_window_node(server: Server, key: str, name: str) -> SimNode:
    """A registered node that then grants no HTTP/2 window to new streams: its map stream's
    full map can never be sent (a stranger can do this on purpose)."""
    node, _, _ = await join(server, key, name, stream=False)
    node.conn.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    node.open_stream()  # the SETTINGS go first, so the stream starts with no window
    return node


async def test_shut_windows_cannot_hold_full_maps_back(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None and server.plane is not None
    poll = server.plane.poll
    poll._full_map_gate = asyncio.Semaphore(2)  # two places, both taken by the stuck nodes
    poll.full_map_deadline = 1.0
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)

    stuck = [await _shut_window_node(server, key, f"stuck{i}") for i in range(2)]
    await asyncio.sleep(0.2)  # both hold a place now
    started = asyncio.get_running_loop().time()
    _, stream, first = await join(server, key, "honest")
    waited = asyncio.get_running_loop().time() - started
    assert first is not None and stream is not None
    assert len(first["Peers"]) == 2
    assert waited < 1.0 + 3.0, waited  # one deadline, not forever
    for node in stuck:  # cut off, with what they had not taken
        await asyncio.wait_for(node.conn.closed.wait(), 5)
        await node.conn.close()
    # The honest stream is not affected by the others going.
    msg = await stream.next(timeout=5)
    assert msg is not None, "stream ended"
    print(msg)
