"""The front door: one listening socket for everything on the main address.

Hypercorn cannot hand over the raw socket for a custom ``Upgrade:``, so this module owns the
listener. It reads the request head (h11); ``/ts2021`` goes to Noise + HTTP/2 (on the socket
itself, or in WebSocket messages for the JS/WASM client), a plugin's upgrade path (``/derp``)
goes to that plugin with the socket, and every other connection is handed to hypercorn, with the
bytes already read, to be served by the Quart app.

On the main listener every connection is admitted through a ConnectionTable (limits.py) and must
deliver its whole first request head within ``limits.header_timeout``: a total deadline, so
trickling a byte at a time does not keep it open.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from meshscale import websocket
from meshscale.config import LimitsConfig
from meshscale.contributions import UpgradeRequest, UpgradeRoute
from meshscale.control.framing import RAW, Framing
from meshscale.control.h2conn import NoiseH2Connection
from meshscale.control.linger import linger
from meshscale.control.request import Handler
from meshscale.errors import ProtocolError
from meshscale.httphead import Head, plain_response, read_head
from meshscale.limits import ConnectionTable, Refusal, Slot, SummaryLog
from meshscale.noise import handshake
from meshscale.noise.records import RecordDecoder, RecordEncoder
from meshscale.workers.handover import EARLY_DATA, CountingReader, early_data, hand_over
from meshscale.workers.link import WorkerPool

log = logging.getLogger(__name__)

TlsChooser = Callable[[socket.socket], Awaitable[ssl.SSLContext]]
TS2021_PATH = websocket.TS2021_PATH
TS2021_UPGRADE = websocket.SUBPROTOCOL  # the same token names the plain upgrade


def _relay_reader(first: bytes, source: asyncio.StreamReader,
                 pumps: set[asyncio.Task[None]]) -> asyncio.StreamReader:
    """A StreamReader that starts with bytes already read, then continues from ``source``,
    through a task kept in ``pumps`` (its front door's: asyncio holds tasks only weakly)."""
    out = asyncio.StreamReader(limit=2**20)
    if first:
        out.feed_data(first)

    async def pump() -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                out.feed_data(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            out.feed_eof()

    task = asyncio.get_running_loop().create_task(pump())
    pumps.add(task)
    task.add_done_callback(pumps.discard)
    return out


class FrontDoor:
    def __init__(
        self,
        noise_key: X25519PrivateKey,
        control: Handler,
        asgi_app: object,
        upgrades: Sequence[UpgradeRoute] = (),
        limits: LimitsConfig | None = None,
        max_connections: int | None = None,
        tls: TlsChooser | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        self.noise_key = noise_key
        self.control = control
        self.app = ASGIWrapper(asgi_app)  # type: ignore[arg-type]
        self.upgrades = list(upgrades)
        self.limits = limits or LimitsConfig()
        self.tls = tls  # the main listener's TLS: a context per connection (its ClientHello)
        self.workers = workers  # connection workers (config ``workers``), or None: served here
        self.hconfig = HypercornConfig()
        self.hconfig.keep_alive_timeout = 75
        # The front door routes a connection by its first request only. A reverse proxy that
        # kept a connection alive after /key would send /ts2021 or /derp down it to the app,
        # which answers 404: so one request per connection (the reply says "close").
        self.hconfig.keep_alive_max_requests = 1
        # hypercorn's deadline is per read; the request head before it was bounded in total.
        self.hconfig.read_timeout = int(max(1, self.limits.body_timeout))
        self.worker = WorkerContext(None)
        self.connections: set[asyncio.Task[None]] = set()
        self.pumps: set[asyncio.Task[None]] = set()  # _relay_reader's, while their source reads
        self.table = ConnectionTable(max_connections or self.limits.max_connections,
                                     self.limits.max_connections_per_ip,
                                     uncapped=self.limits.uncapped_sources)
        self.summary = SummaryLog(self.limits.log_interval)

    # -- admission (the main listener calls these) ------------------------------------------------

    def accepted(self, conn: socket.socket, ip: str) -> None:
        """A new connection from ``ip``: admit it and serve it, or refuse it in one line."""
        evicted = self.table.evicted
        admitted = self.table.admit(ip, _noop)
        if self.table.evicted != evicted:
            self.summary.note("idle connections closed to make room (connection ceiling)", ip)
        if isinstance(admitted, Refusal):
            self.summary.note(f"connections refused ({admitted.reason} limit)", ip)
            _refuse(conn, None if self.tls else admitted.text)
            return
        task = asyncio.get_running_loop().create_task(self._accepted(conn, admitted))
        admitted.close = lambda: _cancel(task)

    def exhausted(self, exc: OSError) -> None:
        """accept() failed for want of descriptors: log a summary, close the longest-idle."""
        self.summary.note(f"accept() failures ({exc.strerror})")
        self.table.evict_one()

    async def _accepted(self, conn: socket.socket, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        try:
            reader = CountingReader(limit=2**20)  # early_data reads its count
            protocol = asyncio.StreamReaderProtocol(reader)
            timeout = self.limits.header_timeout
            try:
                ctx = None
                if self.tls is not None:
                    async with asyncio.timeout(timeout):
                        ctx = await self.tls(conn)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=ctx,
                    ssl_handshake_timeout=timeout if ctx is not None else None)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                log.debug("connection from %s failed before a request: %r", slot.ip, exc)
                conn.close()
                return
            except asyncio.CancelledError:
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self(reader, writer, slot)
        finally:
            self.table.release(slot)

    # -- serving ---------------------------------------------------------------------------------

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       slot: Slot | None = None) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            await self._serve(reader, writer, slot)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The server is stopping. Ending normally rather than as cancelled keeps asyncio's
            # stream callback from logging a traceback for every open connection.
            pass
        except Exception:
            log.exception("connection failed")
        finally:
            if task is not None:
                self.connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     slot: Slot | None) -> None:
        timeout = self.limits.header_timeout
        try:
            async with asyncio.timeout(timeout):
                head = await read_head(reader)
        except ValueError as exc:
            writer.write(plain_response(400, "Bad Request", str(exc)))
            await writer.drain()
            return
        except TimeoutError:
            writer.write(plain_response(
                408, "Request Timeout", f"request head not complete within {timeout:.0f} s"))
            return
        if head is None:
            return
        if head.version not in ("1.0", "1.1"):
            # h11 parses any HTTP/x.y head; this door speaks HTTP/1.x only (no TLS ALPN h2).
            # Passing an "HTTP/2 prior knowledge" preface on would let hypercorn serve many
            # streams on one connection, past the one-request-per-connection routing above.
            writer.write(plain_response(
                505, "HTTP Version Not Supported",
                f"HTTP/{head.version} is not served here; use HTTP/1.1"))
            await writer.drain()
            return
        upgrade = head.header("upgrade").lower()
        if head.path == TS2021_PATH:
            await self._ts2021(head, upgrade, reader, writer, slot)
            return
        if upgrade:
            for route in self.upgrades:
                if route.path == head.path and upgrade in route.protocols:
                    if slot is not None:
                        # A relay connection is in use (the plugin applies its own login
                        # deadline): never closed to make room.
                        self.table.set_busy(slot, True)
                    peer = writer.get_extra_info("peername") or ("", 0)
                    rest = _relay_reader(head.rest, reader, self.pumps) if head.rest else reader
                    await route.handler(
                        UpgradeRequest(
                            method=head.method,
                            target=head.target,
                            headers=head.headers,
                            reader=rest,
                            writer=writer,
                            peer=(str(peer[0]), int(peer[1])),
                        )
                    )
                    return
        # Everything else is ordinary HTTP for the Quart app, with the bytes we already read.
        server = TCPServer(
            self.app,
            asyncio.get_running_loop(),
            self.hconfig,
            self.worker,
            {},
            _relay_reader(head.raw, reader, self.pumps),
            writer,
        )
        await server.run()

    async def _ts2021(
        self,
        head: Head,
        upgrade: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: Slot | None,
    ) -> None:
        framing: Framing = RAW
        try:
            if upgrade == "websocket":  # the JS/WASM client (protocol.md §3.9)
                ws = websocket.accept(head.method, head.target, head.headers,
                                      self.limits.max_websocket_message)
                init, switching, framing = ws.init, ws.response, ws.framing
            else:
                init, switching = _raw_upgrade(head, upgrade)
                # Only connections it accepted itself go to a worker: their reader counts.
                if self.workers is not None and isinstance(reader, CountingReader):
                    if early_data(reader, len(head.raw)):
                        writer.write(plain_response(400, "Bad Request", EARLY_DATA))
                        await linger(reader, writer)  # so that the client reads it (no RST)
                        return
                    if await hand_over(
                            self.workers, init, head.rest, writer,
                            None if slot is None else (
                                lambda busy: self.table.set_busy(slot, busy)),
                            None if slot is None else (lambda: self.table.set_proven(slot))):
                        return
            hs = handshake.respond(self.noise_key, init)
        except websocket.UpgradeRefused as exc:
            writer.write(plain_response(exc.status, _REASONS.get(exc.status, ""), exc.text))
            return
        except ValueError:
            writer.write(plain_response(
                400, "Bad Request", "missing or malformed X-Tailscale-Handshake"))
            return
        except ProtocolError as exc:
            writer.write(plain_response(400, "Bad Request", f"bad handshake: {exc}"))
            return
        writer.write(switching + framing.wrap(hs.response))
        await writer.drain()
        conn = NoiseH2Connection(
            reader,
            writer,
            RecordDecoder(hs.recv_key),
            RecordEncoder(hs.send_key),
            hs.peer_static,
            hs.version,
            self.control,
            self.limits,
            on_busy=None if slot is None else (
                lambda busy: self.table.set_busy(slot, busy)),
            on_success=None if slot is None else (lambda: self.table.set_proven(slot)),
            framing=framing,
        )
        await conn.run(first=head.rest)


_REASONS = {400: "Bad Request", 405: "Method Not Allowed", 426: "Upgrade Required"}


def _raw_upgrade(head: Head, upgrade: str) -> tuple[bytes, bytes]:
    """The Noise initiation of a plain ``/ts2021`` upgrade, and the 101 that accepts it."""
    if head.method not in ("POST", "GET"):
        raise websocket.UpgradeRefused(405, "use POST")
    if upgrade != TS2021_UPGRADE:
        raise websocket.UpgradeRefused(
            400, f"/ts2021 needs Upgrade: {TS2021_UPGRADE} (or websocket)")
    try:
        init = base64.b64decode(head.header("x-tailscale-handshake"), validate=True)
    except binascii.Error:
        raise ValueError("malformed X-Tailscale-Handshake") from None
    return init, RAW_SWITCHING


RAW_SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\n"
                 b"Upgrade: tailscale-control-protocol\r\n"
                 b"Connection: upgrade\r\n\r\n")


def _noop() -> None:
    pass


def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


def _refuse(conn: socket.socket, text: str | None) -> None:
    """One line for a connection we will not serve; a fresh socket's buffer always takes it.

    Over TLS (``text`` None) a plain-text answer would be noise: the connection is just closed."""
    try:
        if text is not None:
            conn.setblocking(False)
            conn.send(plain_response(503, "Service Unavailable", text))
    except OSError:
        pass
    finally:
        conn.close()
