"""What a slow client can hold: a full map place for a while, a bounded transport buffer.

Full maps are built and written a few at a time (poll.FULL_MAPS_AT_ONCE), which bounds the
memory of a storm; a stream holds its place only until poll.full_map_deadline, then its
connection is dropped with whatever it had not sent (issue 19).
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.settings
import pytest

from meshscale.api.admin import create_admin_app
from meshscale.control.h2send import SEND_BUFFER, TRANSPORT_HIGH
from meshscale.control.poll import QUEUE_WRITE
from meshscale.mapper.session import MapSession
from meshscale.noise.handshake import public_bytes
from meshscale.server import Server
from meshscale.simclient import SimNode
from meshscale.state.models import Node
from tests.plugin.simnodes import join
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio


async def _shut_window_node(server: Server, key: str, name: str) -> SimNode:
    """A registered node that then grants no HTTP/2 window to new streams: its map stream's
    full map can never be sent (a stranger can do this on purpose)."""
    node, _, _ = await join(server, key, name, stream=False)
    node.conn.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    node.open_stream()  # the SETTINGS go first, so the stream starts with no window
    return node


@pytest.mark.parametrize("workers", [0, 1])  # the deadline holds through a worker too
async def test_shut_windows_cannot_hold_full_maps_back(
        meshscale_server_factory: Callable[..., Any], workers: int) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite"], workers=workers)
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


async def test_a_bigger_map_gets_more_time(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """The deadline grows with the map (poll.full_map_min_rate): a client on a slow link is
    not cut off from a big map by the fixed part alone."""
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None and server.plane is not None
    poll = server.plane.poll
    poll.full_map_deadline = 0.2
    poll.full_map_min_rate = 200  # bytes per second: a map of 400 bytes or more gets 2 s more
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    started = asyncio.get_running_loop().time()
    stuck = await _shut_window_node(server, key, "stuck")
    await asyncio.wait_for(stuck.conn.closed.wait(), 20)
    held = asyncio.get_running_loop().time() - started
    await stuck.conn.close()
    assert held > 0.2 + 2.0, held  # the size's share counted, not only the fixed 0.2 s


def _server_transports(port: int) -> list[asyncio.WriteTransport]:
    """The server's side of the control connections (this process holds both sides)."""
    return [t for t in gc.get_objects() if isinstance(t, asyncio.Transport)
            and hasattr(t, "get_write_buffer_size") and not t.is_closing()
            and (t.get_extra_info("sockname") or ("", 0))[1] == port]


async def _paused_client(server: Server) -> tuple[
        SimNode, asyncio.WriteTransport, asyncio.ReadTransport, Node, MapSession]:
    """A streaming client "slow" that stops reading, with small socket buffers on both sides
    (our output soon waits in the transport), and the node "busy" whose changes it is sent:
    (slow, the server's transport to it, slow's own transport, busy, slow's map session)."""
    assert server.state is not None and server.mapper is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    slow, _, first = await join(server, key, "slow")
    assert first is not None
    busy, _, _ = await join(server, key, "busy")
    (ours,) = [t for t in _server_transports(server.main_port)
               if t.get_extra_info("peername")[1]
               == slow.conn.writer.get_extra_info("sockname")[1]]
    ours.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    slow.conn.writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport = slow.conn.writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()
    node = server.state.by_node_key(public_bytes(busy.node_key))
    assert node is not None
    return slow, ours, transport, node, server.mapper.sessions[first["Node"]["ID"]]


async def test_a_client_that_stops_reading_holds_little_of_our_output(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """Deltas to a client that reads nothing wait in its stream's queue (shared messages),
    not as bytes in its connection's transport beyond h2send.TRANSPORT_HIGH."""
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None
    slow, ours, _, node, session = await _paused_client(server)
    most = 0
    for i in range(3000):  # each a new endpoint of "busy": a delta of ~150 bytes to "slow"
        server.state.client_update(node, [f"10.1.{i // 250}.{i % 250}:41641"], None, None)
        await asyncio.sleep(0)
        most = max(most, ours.get_write_buffer_size())
        if session.overflows:
            break
    assert session.overflows, "the slow client's backlog never overflowed"
    # The design's bound (poll.py): past the mark, the stream's task may write one batch of
    # up to QUEUE_WRITE queued bytes after a drain, if the kernel took some bytes meanwhile.
    # Without the queue the transport would hold the whole backlog (3,000 deltas, ~450 KB).
    assert most <= TRANSPORT_HIGH + QUEUE_WRITE + 4096, most
    await slow.conn.close()


async def test_a_backlog_goes_out_in_bounded_writes(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """A client that paused while deltas queued gets its backlog in writes of about
    poll.QUEUE_WRITE, each drained before the next, not the whole backlog in one write (a
    per-connection copy of shared messages in every lagging client's transport)."""
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None
    slow, ours, transport, node, session = await _paused_client(server)
    rng = random.Random(1)
    for _ in range(200):  # deltas of 100 random endpoints each (little to compress)
        eps = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}:"
               f"{rng.randrange(1024, 65536)}" for _ in range(100)]
        server.state.client_update(node, eps, None, None)
        await asyncio.sleep(0)
    assert len(session.queue) > 100 and not session.overflows
    bound = TRANSPORT_HIGH + QUEUE_WRITE + 8192
    backlog = sum(len(m.frame(True)) for m in session.queue)
    assert backlog > 2 * bound, backlog  # else this test could not tell
    transport.resume_reading()
    most, loop = 0, asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline:
        most = max(most, ours.get_write_buffer_size())
        if not session.queue and ours.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0)
    assert not session.queue and not session.overflows
    assert most <= bound, (most, backlog)
    await slow.conn.close()


def _wmem_max() -> int:
    return int(Path("/proc/sys/net/core/wmem_max").read_text())


async def test_control_connections_have_a_fixed_send_buffer(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """Not left to autotuning (which grows loopback and LAN buffers to megabytes, so a whole
    full map vanished into the kernel and the full-map gate bounded nothing): h2send.SEND_BUFFER,
    which Linux doubles and caps at twice net.core.wmem_max."""
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    node, _, _ = await join(server, key, "a")
    (ours,) = [t for t in _server_transports(server.main_port)
               if t.get_extra_info("peername")[1]
               == node.conn.writer.get_extra_info("sockname")[1]]
    sock = ours.get_extra_info("socket")
    expected = 2 * min(SEND_BUFFER, _wmem_max())
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == expected
    await node.conn.close()


async def test_debug_sessions_without_peer_lists(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """The benchmarks ask for the sessions' counters only: at 10,000 streams the peer lists
    were 56 MB of JSON, built in the server at the moment its memory was measured."""
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    await join(server, key, "a")
    await join(server, key, "b")
    client = create_admin_app(server).test_client()
    full = await (await client.get("/v1/debug/sessions")).get_json()
    lean = await (await client.get("/v1/debug/sessions?known=0")).get_json()
    assert len(full) == 2 and all("known" in s for s in full)
    assert lean == [{k: v for k, v in s.items() if k != "known"} for s in full]


async def test_a_worker_dying_mid_full_map_frees_its_place(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """A full map waiting for its worker's ACK when the worker dies: the handler ends at once
    (not at the deadline) and its place in the full-map gate is free for the next stream."""
    import os
    import signal

    server: Server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    assert server.state is not None and server.plane is not None
    assert server.workers is not None
    poll = server.plane.poll
    poll._full_map_gate = asyncio.Semaphore(1)  # one place, taken by the stuck node
    poll.full_map_deadline = 30.0  # far longer than the test may wait
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    stuck = await _shut_window_node(server, key, "stuck")
    await asyncio.sleep(0.3)  # its full map holds the place, waiting for the ACK
    victim = next(link for link in server.workers.links
                  if any(c.machine_key == stuck.conn.machine_public
                         for c in link.conns.values()))
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)
    await asyncio.wait_for(stuck.conn.closed.wait(), 5)
    started = asyncio.get_running_loop().time()
    _, stream, first = await join(server, key, "honest")
    assert first is not None and stream is not None
    assert asyncio.get_running_loop().time() - started < 5.0
    # The honest map's place frees when its worker acknowledges the write, which may come
    # after the client already has the map.
    await wait_until(lambda: poll._full_map_gate._value == 1,  # type: ignore[attr-defined]
                     "the full-map gate's place to be free")
