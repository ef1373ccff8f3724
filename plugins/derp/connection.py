"""The asyncio adapter for one DERP client: login, then a read loop and a write loop.

The read loop feeds received bytes to the sans-IO decoder and relay; a flusher moves what the
relay queued for this client to its socket in batches (one write per event-loop turn, not per
packet) and a keep-alive goes out every 60 s plus jitter. A protocol error closes this
connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from nacl.public import PrivateKey

from meshscale.errors import ProtocolError
from meshscale.plugins.derp import frames, handshake
from meshscale.plugins.derp.frames import FrameDecoder, FrameType
from meshscale.plugins.derp.handshake import ClientInfo
from meshscale.plugins.derp.relay import Conn, Relay
from meshscale.plugins.derp.streams import ByteStream

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_JITTER = 5.0
LOGIN_TIMEOUT = 10.0
HIGH_WATER = 256 << 10

#: (client node key, its ClientInfo, remote address) -> may it connect?
Admit = Callable[[bytes, ClientInfo, tuple[str, int]], bool]


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    keepalive: float = KEEPALIVE_INTERVAL
    keepalive_jitter: float = KEEPALIVE_JITTER
    login_timeout: float = LOGIN_TIMEOUT
    # Unsent bytes to one client beyond which we stop writing and queue (then drop oldest).
    high_water: int = HIGH_WATER


async def serve_connection(
    stream: ByteStream,
    relay: Relay,
    server_private: PrivateKey,
    admit: Admit,
    remote: tuple[str, int],
    *,
    settings: ConnectionSettings = ConnectionSettings(),
) -> None:
    """Serve one DERP client until it leaves, misbehaves or is closed; always closes ``stream``."""
    conn: Conn | None = None
    writer: asyncio.Task[None] | None = None
    try:
        decoder = FrameDecoder(max_frame=frames.MAX_CLIENT_INFO_SIZE)
        try:
            async with asyncio.timeout(settings.login_timeout):
                stream.write(handshake.server_key_frame(server_private))
                await stream.drain()
                first, rest = await _first_frame(stream, decoder)
        except TimeoutError:
            log.info("derp: %s: no ClientInfo within %.0f s", _addr(remote), settings.login_timeout)
            return
        if first.type != FrameType.CLIENT_INFO:
            raise ProtocolError(f"expected ClientInfo, got frame type 0x{first.type:02x}")
        client_key, info = handshake.open_client_info(server_private, first.payload)
        conn = relay.new_conn(client_key, info, remote)
        if not conn.can_mesh and not admit(client_key, info, remote):
            relay.stats.refused += 1
            log.info("derp: %s: node key %s refused (not a known node)",
                     _addr(remote), client_key.hex()[:16])
            conn = None
            return
        decoder.max_frame = frames.MAX_FRAME_SIZE
        # ServerInfo goes into the transport before anything the relay may queue for us.
        stream.write(handshake.server_info_frame(server_private, client_key))
        relay.register(conn)
        flusher = _Flusher(conn, stream, relay, settings.high_water)
        conn.wake = flusher.wake
        conn.on_close = stream.abort
        writer = asyncio.create_task(flusher.drain_loop())
        writer.add_done_callback(lambda _t: stream.abort())  # a failed write ends the reads too
        _start_keepalive(conn, settings)
        for frame in rest:
            relay.handle_frame(conn, frame)
        while not conn.closed:
            data = await stream.read()
            if not data:
                break
            for frame in decoder.feed(data):
                relay.handle_frame(conn, frame)
    except ProtocolError as exc:
        relay.stats.protocol_errors += 1
        log.info("derp: %s: closing connection: %s", _addr(remote), exc)
    except (ConnectionError, OSError) as exc:
        log.debug("derp: %s: connection error: %s", _addr(remote), exc)
    finally:
        if conn is not None:
            relay.unregister(conn)
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await writer
        stream.abort()


async def _first_frame(
    stream: ByteStream, decoder: FrameDecoder
) -> tuple[frames.Frame, list[frames.Frame]]:
    while True:
        data = await stream.read()
        if not data:
            raise ProtocolError("connection closed before ClientInfo")
        got = decoder.feed(data)
        if got:
            return got[0], got[1:]


class _Flusher:
    """Moves queued frames to the socket: soon, in one write per read batch, unless congested.

    The relay calls ``wake`` on every enqueue. While the client's transport has little unsent
    data we write straight through (once per event-loop turn, or at once when a burst fills
    half a queue), so bursts are not dropped just because the sender's bytes arrived in one
    read. When unsent data piles up past ``high_water``, frames stay in the bounded queues
    (oldest dropped) and the drain task writes them once the client catches up.
    """

    __slots__ = ("conn", "event", "flush_at", "high_water", "loop", "relay", "scheduled",
                 "stream")

    def __init__(
        self, conn: Conn, stream: ByteStream, relay: Relay, high_water: int
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.relay = relay
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.scheduled = False
        self.high_water = high_water
        self.flush_at = max(1, relay.queue_depth // 2)

    def wake(self) -> None:
        # Called per relayed packet: the common case is one length check and a flag test.
        conn = self.conn
        if len(conn.packets) >= self.flush_at or len(conn.disco) >= self.flush_at:
            self._flush_unless_congested()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._soon)

    def _soon(self) -> None:
        self.scheduled = False
        if not self.conn.closed:
            self._flush_unless_congested()

    def _flush_unless_congested(self) -> None:
        if self.stream.buffered() >= self.high_water:
            self.event.set()  # congested: queue (dropping oldest) until the drain task flushes
        else:
            self.flush()

    def flush(self) -> None:
        if self.conn.closed or not self.conn.has_pending():
            return
        out, npackets = self.conn.take()
        data = b"".join(out)
        self.stream.write(data)
        self.relay.note_sent(npackets, len(data))
        if self.stream.buffered() >= self.high_water:
            self.event.set()

    async def drain_loop(self) -> None:
        while not self.conn.closed:
            await self.event.wait()
            self.event.clear()
            await self.stream.drain()
            self.flush()


def _start_keepalive(conn: Conn, settings: ConnectionSettings) -> None:
    loop = asyncio.get_running_loop()
    interval = settings.keepalive + random.uniform(0, settings.keepalive_jitter)
    loop.call_later(interval, _keepalive, conn, loop, interval)


def _keepalive(conn: Conn, loop: asyncio.AbstractEventLoop, interval: float) -> None:
    # Re-arms itself until the connection is closed.
    if conn.closed:
        return
    conn.queue_control(frames.KEEP_ALIVE)
    loop.call_later(interval, _keepalive, conn, loop, interval)


def _addr(remote: tuple[str, int]) -> str:
    return f"{remote[0]}:{remote[1]}"
