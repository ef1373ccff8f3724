"""Connection workers (config ``workers``): simulated clients served by worker processes get
what they get from one process; a worker that dies takes only its connections; a stopped server
leaves no worker behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.bench.serverproc import ServerProcess, children
from meshscale.noise.handshake import public_bytes
from meshscale.ports import free_port
from meshscale.server import Server
from meshscale.simclient import ControlConnection, MapStream, SimNode
from meshscale.simhandshake import CAPVER, finish_handshake, make_initiation, upgrade_request
from meshscale.workers import codec
from meshscale.workers.link import WorkerLink
from tests.plugin.simnodes import join, next_with, quiet
from tests.tlsca import TestCA
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not a running worker
        return f.read().split()[2] != "Z"


def _key(server: Server) -> str:
    assert server.state is not None
    user = server.state.create_user("alice", email="alice@example.com")
    return server.state.create_key(user, reusable=True)[1]


def _summary(msg: dict[str, Any]) -> Any:
    """What a map message says, without what differs between runs (keys, times, addresses)."""
    out: dict[str, Any] = {"fields": sorted(msg)}
    if "Peers" in msg:
        out["peers"] = sorted(p["Name"].split(".")[0] for p in msg["Peers"])
    if "PeersChangedPatch" in msg:
        out["patch"] = sorted((sorted(p)) for p in msg["PeersChangedPatch"])
    if "PeersChanged" in msg:
        out["changed"] = sorted(p["Name"].split(".")[0] for p in msg["PeersChanged"])
    return out


async def _offline(stream: MapStream, timeout: float = 10.0) -> dict[str, Any]:
    """The next patch saying a peer went offline."""
    while True:
        msg = await next_with(stream, "PeersChangedPatch", timeout)
        if any(p.get("Online") is False for p in msg["PeersChangedPatch"]):
            return msg


async def _scenario(server: Server) -> list[Any]:
    """Three nodes stream maps; one reports new endpoints twice (a fan-out each) and leaves."""
    key = _key(server)
    nodes: list[tuple[SimNode, MapStream]] = []
    transcript: list[Any] = []
    for name in ("alpha", "bravo", "charlie"):
        node, stream, first = await join(server, key, name)
        assert stream is not None and first is not None
        transcript.append((name, _summary(first)))
        nodes.append((node, stream))
    for _, stream in nodes:
        transcript.append([_summary(m) for m in await quiet(stream)])
    alpha = nodes[0][0]
    for i in range(2):
        assert await alpha.lite_update([f"192.0.2.1:{4000 + i}"]) == 200
        raw = []
        for _, stream in nodes[1:]:
            msg = await next_with(stream, "PeersChangedPatch")
            transcript.append(_summary(msg))
            raw.append(msg)
        assert raw[0] == raw[1]  # one shared frame for every recipient
    await alpha.conn.close()
    for _, stream in nodes[1:]:
        transcript.append(_summary(await _offline(stream)))
    for node, _ in nodes[1:]:
        await node.conn.close()
    return transcript


@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_serve_as_one_process(meshscale_server_factory: Callable[..., Any],
                                            workers: int) -> None:
    single = await meshscale_server_factory(plugins=["sqlite"])
    pooled = await meshscale_server_factory(plugins=["sqlite"], workers=workers)
    assert pooled.workers is not None and len(pooled.workers.pids()) == workers
    expected = await _scenario(single)
    got = await _scenario(pooled)
    assert got == expected
    # The connections were the workers' (not served by the owner's fallback).
    assert sum(link.messages_out for link in pooled.workers.links) > 0


async def test_fanout_is_one_message_per_worker_per_frame(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    assert server.workers is not None
    key = _key(server)
    streams = []
    for i in range(6):
        _, stream, _ = await join(server, key, f"n{i}")
        streams.append(stream)
    for s in streams:
        await quiet(s)
    links = server.workers.links
    assert all(len(link.conns) == 3 for link in links)  # least-loaded: 3 and 3
    written: list[tuple[bytes, int]] = []
    for link in links:
        orig = link.flush

        def spy(link: Any = link, orig: Any = orig) -> None:
            written.extend((frame, len(keys)) for frame, keys in link._pending.values())
            orig()

        link.flush = spy  # type: ignore[method-assign]
    # A lite update from a node with no stream: its endpoints fan out to all six streams.
    extra, _, _ = await join(server, key, "extra", stream=False)
    await quiet(streams[0])
    written.clear()
    assert await extra.lite_update(["192.0.2.9:41641"]) == 200
    for s in streams:
        await next_with(s, "PeersChangedPatch")
    # Two messages (one per worker), each one frame for that worker's three streams.
    assert [n for _, n in written] == [3, 3]
    assert written[0][0] is written[1][0]


async def _two_nodes_on_two_workers(
        server: Server) -> tuple[str, tuple[SimNode, MapStream], tuple[SimNode, MapStream],
                                 WorkerLink]:
    """Nodes a and b joined and streaming, each on its own worker (the pool gives a new
    connection to the worker holding the fewest); the worker holding a's connection."""
    assert server.workers is not None
    key = _key(server)
    a, sa, _ = await join(server, key, "a")
    b, sb, _ = await join(server, key, "b")
    assert sa is not None and sb is not None
    await quiet(sa)
    await quiet(sb)
    victim = next(link for link in server.workers.links if len(link.conns) == 1
                  and next(iter(link.conns.values())).machine_key == a.conn.machine_public)
    return key, (a, sa), (b, sb), victim


async def test_a_dead_worker_takes_only_its_connections(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    key, (_a, sa), (b, sb), victim = await _two_nodes_on_two_workers(server)
    assert server.workers is not None
    pid = victim.proc.pid if victim.proc is not None else 0
    os.kill(pid, signal.SIGKILL)
    assert server.front is not None
    held = server.front.table.total  # a's and b's connections (and nothing else open)
    # a's stream ends with its connection; b is told a went offline.
    assert await sa.next(timeout=10) is None
    await _offline(sb)
    assert server.front.table.total == held - 1  # a's slot in the connection table is free
    # The worker is replaced, and new connections are served.
    for _ in range(100):
        if all(link.alive for link in server.workers.links) and pid not in server.workers.pids():
            break
        await asyncio.sleep(0.1)
    assert pid not in server.workers.pids() and len(server.workers.pids()) == 2
    c, sc, first = await join(server, key, "c")
    assert first is not None and sc is not None
    await b.conn.close()
    await c.conn.close()


async def test_a_hung_worker_is_replaced(meshscale_server_factory: Callable[..., Any],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that stops answering (SIGSTOP: alive to the kernel, so its socket stays open)
    misses its heartbeat; it is killed and replaced, its clients' connections close, and a
    client that connects again is served."""
    from meshscale.workers import link as link_mod

    monkeypatch.setattr(link_mod, "HEARTBEAT_INTERVAL", 0.2)
    monkeypatch.setattr(link_mod, "HEARTBEAT_DEADLINE", 1.0)
    server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    key, (_a, sa), (b, sb), victim = await _two_nodes_on_two_workers(server)
    assert server.workers is not None and victim.proc is not None
    pid = victim.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        assert await sa.next(timeout=10) is None  # killed: a's connection closes
        await _offline(sb)
        for _ in range(100):
            if (pid not in server.workers.pids()
                    and all(link.alive for link in server.workers.links)):
                break
            await asyncio.sleep(0.1)
        assert pid not in server.workers.pids() and not _alive(pid)
        assert len(server.workers.pids()) == 2
        # a connects again (a new connection, to whichever worker has the fewest) and is served.
        a2, sa2, first = await join(server, key, "a-again")
        assert first is not None and sa2 is not None
        await a2.conn.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    await b.conn.close()


async def test_stop_leaves_no_worker(meshscale_server_factory: Callable[..., Any]) -> None:
    server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    assert server.workers is not None
    pids = server.workers.pids()
    key = _key(server)
    node, stream, _ = await join(server, key, "a")
    assert all(_alive(p) for p in pids)
    await server.stop()
    assert not any(_alive(p) for p in pids)
    assert stream is not None
    while (await stream.next(timeout=10)) is not None:
        pass  # what was sent before the stop; then the stream ends
    await node.conn.close()


async def test_a_corrupt_message_closes_only_that_worker(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    key, (_a, sa), (b, sb), victim = await _two_nodes_on_two_workers(server)
    assert server.workers is not None
    pid = victim.proc.pid if victim.proc is not None else 0
    # What the owner would read from a worker gone wrong: a message of an unknown type.
    victim.data_received(b"\x01\x00\x00\x00\x63")
    assert await sa.next(timeout=10) is None  # its connections close
    await _offline(sb)  # and the owner goes on: b hears of it
    for _ in range(100):
        if pid not in server.workers.pids() and all(link.alive for link in server.workers.links):
            break
        await asyncio.sleep(0.1)
    assert pid not in server.workers.pids() and not _alive(pid)
    _, sc, first = await join(server, key, "c")
    assert first is not None and sc is not None
    await b.conn.close()


async def test_an_owner_killed_leaves_no_worker() -> None:
    """SIGKILL gives the owner no chance to stop its workers: they notice their control socket
    close and exit by themselves."""
    srv = ServerProcess(["sqlite"], {"workers": 2})
    try:
        srv.start()
        kids: list[int] = []
        for _ in range(50):
            kids = children(srv.pid)
            if len(kids) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(kids) == 2
        os.kill(srv.pid, signal.SIGKILL)
        assert srv.proc is not None
        srv.proc.wait()
        for _ in range(100):
            if not any(_alive(k) for k in kids):
                break
            await asyncio.sleep(0.1)
        assert not any(_alive(k) for k in kids)
    finally:
        srv.remove()


async def test_tls_on_the_main_listener_stays_in_the_owner(
        meshscale_server_factory: Callable[..., Any], tmp_path: Path) -> None:
    """The TLS session is the owner's: a /ts2021 over it is not handed over (served as with
    ``workers: 0``)."""
    ca = TestCA(tmp_path / "ca")
    issued = ca.issue("srv", "localhost", "127.0.0.1")
    port = free_port()
    server = await meshscale_server_factory(
        plugins=["sqlite"], workers=1, port=port, server_url=f"https://localhost:{port}",
        tls_cert_path=str(issued.cert), tls_key_path=str(issued.key))
    assert server.workers is not None and server.front is not None
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    machine = X25519PrivateKey.generate()
    init, ss, e = make_initiation(machine, public_bytes(server.front.noise_key), CAPVER)
    writer.write(upgrade_request("localhost", port, init))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    finish_handshake(ss, e, machine, await asyncio.wait_for(reader.readexactly(51), 10))
    assert [len(link.conns) for link in server.workers.links] == [0]
    writer.close()


async def test_data_past_64k_after_the_upgrade_is_refused_not_dropped(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """A client that sends over 64 KiB after its /ts2021 upgrade request (no honest client sends
    any) is refused with a 400 saying so: the bytes the front door's reader held beyond what
    read_head returned would otherwise be dropped on the way to the worker."""
    from meshscale.transport import EARLY_DATA

    server = await meshscale_server_factory(plugins=["sqlite"], workers=1)
    assert server.workers is not None and server.front is not None
    machine = X25519PrivateKey.generate()
    init, _, _ = make_initiation(machine, public_bytes(server.front.noise_key), CAPVER)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.main_port)
    writer.write(upgrade_request("127.0.0.1", server.main_port, init) + b"\x17" * (200 << 10))
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert EARLY_DATA.encode() in answer
    assert [len(link.conns) for link in server.workers.links] == [0]
    writer.close()
    # An honest client is still handed over.
    node, _stream, first = await join(server, _key(server), "a")
    assert first is not None and [len(link.conns) for link in server.workers.links] == [1]
    await node.conn.close()


async def test_a_shared_chunk_crosses_to_a_worker_once(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """A full map's shared peer chunks (mapper ChunkCache) go to the worker as bytes once; the
    next map that holds them sends their keys only, and the client gets the same map."""
    server = await meshscale_server_factory(plugins=["sqlite"], workers=1)
    assert server.workers is not None
    key = _key(server)
    for i in range(40):  # IDs 1-40: for viewers 41 and 42, IDs 1-31 are two shared sub-chunks
        node, _, _ = await join(server, key, f"n{i}", stream=False)
        await node.conn.close()
    (link,) = server.workers.links
    maps: list[tuple[int, list[tuple[int, int, bytes]]]] = []  # (bytes written, segments)
    orig = link.send_parts

    def spy(parts: list[bytes]) -> None:
        (m,) = codec.Decoder(codec.TO_WORKER).feed(b"".join(parts))
        if m.kind == codec.DATA_CACHED and any(k != codec.INLINE for k, _, _ in m.segments):
            maps.append((sum(map(len, parts)), m.segments))
        orig(parts)

    link.send_parts = spy  # type: ignore[method-assign]
    s1, _, first1 = await join(server, key, "s1")
    s2, _, first2 = await join(server, key, "s2")
    assert first1 is not None and first2 is not None
    assert (len(first1["Peers"]), len(first2["Peers"])) == (40, 41)
    (w1, seg1), (w2, seg2) = maps  # the two full maps (deltas and keep-alives carry no chunk)
    defined = {key: len(data) for kind, key, data in seg1 if kind == codec.DEFINE}
    assert len(defined) == 2  # the sub-chunks of IDs 1-15 and 16-31
    assert {key for kind, key, _ in seg2 if kind == codec.REF} == set(defined)
    assert not any(kind == codec.DEFINE for kind, _, _ in seg2)
    # s2's map is s1's (one peer more) without the chunks' bytes.
    assert w2 < w1 - sum(defined.values()) + 300, (w1, w2, defined)
    await s1.conn.close()
    await s2.conn.close()


async def test_a_stalled_worker_does_not_grow_the_owners_buffer(
        meshscale_server_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan-out storm towards a worker that reads nothing (stopped here) stops at the owner's
    WRITE_HIGH: its streams' deltas queue in their sessions (bounded) instead of in the owner's
    buffer towards that worker; and the stream catches up once the worker runs again."""
    from meshscale.control.poll import QUEUE_WRITE
    from meshscale.workers import link as link_mod

    high = 16 << 10
    monkeypatch.setattr(link_mod, "WRITE_HIGH", high)
    server = await meshscale_server_factory(plugins=["sqlite"], workers=2)
    assert server.workers is not None
    key = _key(server)
    _, sa, _ = await join(server, key, "a")
    b, sb, _ = await join(server, key, "b")
    extra, _, _ = await join(server, key, "extra", stream=False)
    assert sa is not None and sb is not None
    await quiet(sa)
    await quiet(sb)

    def holder(node: SimNode) -> Any:
        return next(link for link in server.workers.links  # type: ignore[union-attr]
                    if any(c.machine_key == node.conn.machine_public
                           for c in link.conns.values()))

    victim = holder(b)
    assert holder(extra) is not victim and victim.proc is not None
    assert victim.transport is not None
    # A small kernel buffer, so that the owner's own buffer is what a stall fills.
    victim.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        peak = 0
        assert server.state is not None
        node = next(n for n in server.state.nodes.values() if n.hostname == "extra")
        for i in range(1500):
            # As many nodes' lite updates would (one node's own are rate-limited): each a
            # delta fanned out to a and b.
            server.state.client_update(node, [f"192.0.2.1:{1000 + i}"], None, None)
            await asyncio.sleep(0)
            peak = max(peak, victim.transport.get_write_buffer_size())
        # At most WRITE_HIGH of batches plus one acknowledged write of queued deltas.
        assert peak <= high + QUEUE_WRITE + 4096, peak
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    for _ in range(2000):
        msg = await sb.next(timeout=10)
        assert msg is not None
        if "192.0.2.1:2499" in str(msg):
            break
    else:
        raise AssertionError("b never got the latest endpoint")


async def test_the_connection_ceiling_evicts_handed_over_connections(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """limits.max_connections sheds idle connections a worker serves as it does the owner's
    (the front door's table keeps their slots; eviction cancels the task waiting in hand_over,
    which tells the worker to close), and keeps the busy one (an open map stream)."""
    server = await meshscale_server_factory(plugins=["sqlite"], workers=1,
                                            limits={"max_connections": 6})
    assert server.workers is not None and server.front is not None
    link = server.workers.links[0]
    key = _key(server)
    busy, stream, _ = await join(server, key, "busy")
    assert stream is not None
    await quiet(stream)
    idle = []
    for _ in range(3):  # Noise done, then nothing: idle, on the worker
        conn = ControlConnection()
        await conn.connect("127.0.0.1", server.main_port)
        idle.append(conn)
    await wait_until(lambda: len(link.conns) == 4, "the worker to hold 4 connections")
    assert len(link.conns) == 4
    # Past the ceiling: each new connection makes room by closing the longest idle one.
    plain = [await asyncio.open_connection("127.0.0.1", server.main_port) for _ in range(5)]
    for conn in idle:  # the worker closed each (its client sees the end)
        await asyncio.wait_for(conn.closed.wait(), 5)
    await wait_until(lambda: len(link.conns) == 1, "the worker to close the idle ones")
    assert len(link.conns) == 1 and server.front.table.evicted >= 3
    assert server.front.table.total <= 6
    assert await busy.lite_update(["192.0.2.1:41641"]) == 200  # the busy one is kept
    for _, w in plain:
        w.close()
    await busy.conn.close()


async def test_the_owner_keeps_no_descriptor_of_a_handed_over_connection(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """After a hand-over only the worker holds the client's socket: the owner's descriptors
    (this process, minus the clients' own sockets) do not grow with the connections."""
    server = await meshscale_server_factory(plugins=["sqlite"], workers=1)
    assert server.workers is not None
    link = server.workers.links[0]

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    conns = []
    for _ in range(20):
        conn = ControlConnection()
        await conn.connect("127.0.0.1", server.main_port)
        conns.append(conn)
    await wait_until(lambda: len(link.conns) == 20, "the worker to hold 20 connections")
    assert len(link.conns) == 20
    await asyncio.sleep(0.1)  # the transports' deferred closes have run
    assert fds() - len(conns) <= before + 2, (fds(), before)
    for conn in conns:
        await conn.close()
    await wait_until(lambda: not link.conns, "the worker to see every connection go")
    assert not link.conns and fds() <= before + 2


async def test_an_abort_that_crosses_the_adoption_still_closes_the_connection(
        meshscale_server_factory: Callable[..., Any]) -> None:
    """Evicted right after the hand-over, before the worker took the socket: the ABORT (control
    socket) reaches the worker before its connection exists there. It must still close, not
    live on in the worker outside the front door's table."""
    server = await meshscale_server_factory(plugins=["sqlite"], workers=1)
    assert server.workers is not None and server.front is not None
    link = server.workers.links[0]
    assert link.proc is not None
    os.kill(link.proc.pid, signal.SIGSTOP)  # the adoption and the ABORT both wait for it
    try:
        conn = ControlConnection()
        connecting = asyncio.create_task(conn.connect("127.0.0.1", server.main_port))
        for _ in range(100):
            if link.conns:
                break
            await asyncio.sleep(0.02)
        assert len(link.conns) == 1
        assert server.front.table.evict_one()  # as the connection ceiling would
        await asyncio.sleep(0.1)
    finally:
        os.kill(link.proc.pid, signal.SIGCONT)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connecting, 5)
    await asyncio.wait_for(conn.closed.wait(), 5)
    for _ in range(100):
        if not link.conns:
            break
        await asyncio.sleep(0.05)
    assert not link.conns
