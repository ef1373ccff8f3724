"""Issue 11, items 3, 4 and 12: what one stranger can hold on the main listener is bounded.

Each test sends the attack as an attacker would (from 127.0.0.2 where the source matters), checks
the refusal the attacker sees, and then that a healthy client is still served.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import h2.errors
import h2.events
import h2.exceptions
import pytest

from meshscale.simclient import ControlConnection
from meshscale.simhandshake import CAPVER, fetch_server_key, make_initiation
from tests.plugin.test_bad_input import still_serving

pytestmark = pytest.mark.asyncio

ATTACKER = "127.0.0.2"


@pytest.fixture(params=[0, 1], ids=["one-process", "workers"])
def server_with(request: pytest.FixtureRequest,
                meshscale_server_factory: Callable[..., Any]) -> Callable[..., Any]:
    """conftest's server_with, run twice: served in one process, and with a connection worker
    (config ``workers``): every limit and deadline here must hold through a worker too."""

    async def make(**limits: Any) -> Any:
        return await meshscale_server_factory(plugins=["sqlite"], limits=limits,
                                              workers=request.param)

    return make


class Recording(ControlConnection):
    """A control connection that keeps every HTTP/2 event it receives, GOAWAY included."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[h2.events.Event] = []

    def _event(self, ev: h2.events.Event) -> None:
        self.events.append(ev)
        super()._event(ev)

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for ev in self.events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                return ev
        return None

    def raw(self, plain: bytes) -> None:
        """Send HTTP/2 bytes the h2 library would never produce."""
        self.writer.write(self.encoder.encode(plain))


async def attacker_socket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    out = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(4096):
            out += chunk
    return bytes(out)


# -- item 3: unauthenticated memory growth ------------------------------------------------------


async def test_item3_body_bytes_in_flight_are_bounded(server_with: Callable[..., Any]) -> None:
    budget = 256 * 1024
    server = await server_with(max_body_bytes=100_000, max_connection_body_bytes=budget,
                               body_timeout=1.5)
    conn = Recording()
    await conn.connect("127.0.0.1", server.main_port)
    # The attack: 64 streams, each pushing 1 MiB without END_STREAM, as fast as credit allows.
    sids = [conn._headers("/machine/register", "POST") for _ in range(64)]
    conn._flush()
    sent = 0
    chunk = b"x" * 16384
    stalled_since = time.monotonic()
    while time.monotonic() - stalled_since < 0.5:
        progressed = False
        for sid in sids:
            try:
                room = min(conn.h2.local_flow_control_window(sid), len(chunk))
            except Exception:
                continue
            if room > 0 and not conn.replies[sid].done.is_set():
                conn.h2.send_data(sid, chunk[:room])
                sent += room
                progressed = True
        conn._flush()
        await conn.writer.drain()
        if progressed:
            stalled_since = time.monotonic()
        await asyncio.sleep(0.01)
    # Flow control stopped it at the budget plus the 64 KiB every connection starts with,
    # not at 64 MiB.
    assert sent <= budget + 65535, sent
    # The unfinished bodies time out: each stream is answered 408 and its bytes are dropped.
    for sid in sids:
        await asyncio.wait_for(conn.replies[sid].done.wait(), 5)
    assert {conn.replies[sid].status for sid in sids} == {408}
    assert b"not complete within" in bytes(conn.replies[sids[0]].body)
    # The same connection is still usable.
    status, _ = await conn.request("/machine/register", b"{")
    assert status == 400
    await conn.close()
    await still_serving(server)


async def test_item3_body_over_the_limit_is_refused_before_it_ends(
        server_with: Callable[..., Any]) -> None:
    server = await server_with(max_body_bytes=100_000, max_connection_body_bytes=200_000)
    conn = Recording()
    await conn.connect("127.0.0.1", server.main_port)
    sid = conn._headers("/machine/register", "POST")
    sent = 0
    for _ in range(200):  # never ends the stream
        room = min(conn.h2.local_flow_control_window(sid), 16384)
        if conn.replies[sid].done.is_set():
            break
        if room > 0:
            conn.h2.send_data(sid, b"y" * room)
            sent += room
            conn._flush()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(conn.replies[sid].done.wait(), 5)
    assert conn.replies[sid].status == 413
    assert sent < 100_000 + 2 * 65535
    await conn.close()
    await still_serving(server)


# -- item 4: deadlines and connection caps --------------------------------------------------------


async def test_item4_header_deadline_is_total_not_per_read(server_with: Callable[..., Any]) -> None:
    server = await server_with(header_timeout=1)
    reader, writer = await attacker_socket(server.main_port)
    request = b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()

    async def trickle() -> None:
        for byte in request:  # one byte every 0.2 s: each read is quick, the head never ends
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    sender = asyncio.create_task(trickle())
    reply = await read_all(reader, 5)
    sender.cancel()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"not complete within 1 s" in reply
    assert time.monotonic() - started < 2.5
    await still_serving(server)


async def _upgraded(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A ts2021 session whose handshake completed, from the attacker's address."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    init, _, _ = make_initiation(X25519PrivateKey.generate(),
                                 await fetch_server_key("127.0.0.1", port), CAPVER)
    reader, writer = await attacker_socket(port)
    writer.write(b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\n"
                 b"Connection: upgrade\r\nX-Tailscale-Handshake: "
                 + base64.b64encode(init) + b"\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_item4_half_open_noise_session_is_closed(server_with: Callable[..., Any]) -> None:
    server = await server_with(handshake_timeout=1)
    reader, writer = await _upgraded(server.main_port)
    started = time.monotonic()
    await read_all(reader, 5)  # the attacker sends no HTTP/2 preface; the server hangs up
    assert time.monotonic() - started < 3
    writer.close()
    await still_serving(server)


async def test_item4_idle_noise_session_gets_goaway(server_with: Callable[..., Any]) -> None:
    server = await server_with(idle_timeout=1)
    conn = Recording()
    await conn.connect("127.0.0.1", server.main_port)
    status, _ = await conn.request("/machine/register", b"{")  # one request, then silence
    assert status == 400
    await asyncio.wait_for(conn.closed.wait(), 5)
    ev = conn.goaway()
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.NO_ERROR
    assert ev.additional_data == b"idle"
    await conn.close()
    await still_serving(server)


async def test_item4_per_source_connection_cap(server_with: Callable[..., Any]) -> None:
    server = await server_with(max_connections_per_ip=5)
    held = [await attacker_socket(server.main_port) for _ in range(5)]
    reader, writer = await attacker_socket(server.main_port)
    reply = await read_all(reader, 5)
    assert reply.startswith(b"HTTP/1.1 503"), reply
    assert b"too many connections from 127.0.0.2" in reply
    writer.close()
    await still_serving(server)  # another address is not affected
    for _, w in held:
        w.close()
    # 127.0.0.1 is where a reverse proxy connects from (limits.uncapped_sources): not capped.
    local = [await asyncio.open_connection("127.0.0.1", server.main_port) for _ in range(6)]
    await still_serving(server)
    for _, w in local:
        w.close()


async def test_item4_ceiling_sheds_idle_connections_keeps_busy_ones(
        server_with: Callable[..., Any]) -> None:
    server = await server_with(max_connections=12)
    assert server.state is not None
    user = server.state.create_user("busy")
    _, key = server.state.create_key(user, reusable=True)
    from meshscale.simclient import SimNode

    streaming = SimNode("streaming")  # a node with an open map stream: busy
    await streaming.conn.connect("127.0.0.1", server.main_port)
    assert (await streaming.register(key))["MachineAuthorized"] is True
    stream = streaming.open_stream()
    assert await stream.next() is not None
    # The attack: idle connections up to and past the ceiling.
    idle = [await attacker_socket(server.main_port) for _ in range(30)]
    await asyncio.sleep(0.2)
    assert server.front is not None
    assert server.front.table.total <= 12
    assert server.front.table.evicted >= 19
    # New clients still get /key and register (each makes room by shedding an idle one)...
    await still_serving(server)
    await still_serving(server)
    # ...and the busy stream was kept and still gets updates.
    assert await streaming.lite_update(["1.2.3.4:41641"]) == 200
    await streaming.conn.close()
    for _, w in idle:
        w.close()


async def test_item4_accept_exhaustion_logs_one_line(
        server_with: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    import os
    import resource

    server = await server_with(log_interval=60)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    clients = []
    caplog.set_level(logging.WARNING)
    try:
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 40, hard))
        # Use every descriptor left, so the server's accept() fails with EMFILE.
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        # Connections queue in the kernel's backlog; the client sockets need descriptors too.
        for _ in range(10):
            os.close(fillers.pop())
        for _ in range(5):
            clients.append(await attacker_socket(server.main_port))
        await asyncio.sleep(1.5)  # about 15 retries of accept()
        lines = [r for r in caplog.records if "accept() failures" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # Descriptors are back: the queued connections are served.
    for _, w in clients:
        w.close()
    await still_serving(server)


# -- item 12: HTTP/2 abuse and hostile bodies -----------------------------------------------------


async def test_item12_rapid_reset_gets_goaway(server_with: Callable[..., Any]) -> None:
    server = await server_with(reset_limit=50, reset_window=10)
    conn = Recording()
    await conn.connect("127.0.0.1", server.main_port)
    for _ in range(200):  # HEADERS (with END_STREAM) immediately followed by RST_STREAM
        try:
            sid = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(sid, [(":method", "POST"), (":scheme", "https"),
                                       (":authority", "x"), (":path", "/machine/register")],
                                 end_stream=True)
            conn.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            break  # the client's h2 saw the server's GOAWAY
        conn._flush()
        await asyncio.sleep(0)
    await asyncio.wait_for(conn.closed.wait(), 5)  # the limit holds (else this times out)
    # The client reads the GOAWAY, through a worker too: there the close used to find the
    # attacker's next frames unread, and the kernel's RST discarded the GOAWAY in the client's
    # buffer before it was read (control/linger.py).
    ev = conn.goaway()
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    await conn.close()
    await still_serving(server)


async def test_item12_oversized_frame_header_is_refused(server_with: Callable[..., Any]) -> None:
    server = await server_with()
    conn = Recording()
    await conn.connect("127.0.0.1", server.main_port)
    sid = conn._headers("/machine/register", "POST")
    conn._flush()
    # A DATA frame header declaring 16 MiB - 1; only the 9-byte header is ever sent.
    conn.raw((2**24 - 1).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big"))
    await asyncio.wait_for(conn.closed.wait(), 5)
    ev = conn.goaway()
    assert ev is not None and ev.error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    await conn.close()
    await still_serving(server)


async def test_item12_deeply_nested_json_is_a_400(
        server_with: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    server = await server_with()
    caplog.set_level(logging.INFO)
    conn = ControlConnection()
    await conn.connect("127.0.0.1", server.main_port)
    for path in ("/machine/register", "/machine/map"):
        status, body = await conn.request(path, b'{"a":' + b"[" * 100_000)
        assert status == 400 and b"nested too deeply" in body, (status, body)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    await conn.close()
    await still_serving(server)


async def test_item12_unknown_machine_path_is_404(server_with: Callable[..., Any]) -> None:
    server = await server_with()
    conn = ControlConnection()
    await conn.connect("127.0.0.1", server.main_port)
    for path in ("/machine/id-token", "/machine/no-such-thing", "/elsewhere"):
        status, body = await conn.request(path, json.dumps({"Version": 130}).encode())
        assert status == 404 and b"not found" in body, (path, status)
    await conn.close()
    await still_serving(server)
