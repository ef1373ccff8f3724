"""The HTTPS listener: accepts, peeks at the ClientHello, then hands the socket to asyncio's TLS.

asyncio.start_server takes one SSLContext for good. Accepting here instead lets every connection
get the context in force when it arrives (certificate reloads and renewals need no restart) and
lets an ACME TLS-ALPN-01 validator get its challenge certificate while clients on the same name
keep getting the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from meshscale.tls import clienthello
from meshscale.tls.clienthello import ClientHello

log = logging.getLogger(__name__)

#: A client must have sent its ClientHello within this, and finished the handshake within that.
HELLO_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 20.0
#: Connections still before or in their TLS handshake; more are closed at once (a stranger
#: opening sockets and sending nothing holds one of these for at most the two timeouts).
MAX_PENDING = 1024

Callback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


class TlsListener:
    """Looks enough like asyncio.Server for the server's listener list (close, sockets)."""

    def __init__(self, sock: socket.socket, callback: Callback,
                 choose: Callable[[ClientHello | None], ssl.SSLContext], limit: int) -> None:
        self._sock = sock
        self._callback = callback
        self._choose = choose
        self._limit = limit
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.sockets = [sock]

    async def start_serving(self) -> None:
        self._sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(),
                                                             name="tls-accept")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._pending):
            task.cancel()
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                # Out of file descriptors and the like: wait a little rather than spin.
                log.warning("https listener: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if len(self._pending) >= MAX_PENDING:
                log.warning("https listener: %d handshakes pending; closing a new connection",
                            MAX_PENDING)
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._connection(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            hello = await asyncio.wait_for(peek_hello(conn), HELLO_TIMEOUT)
            ctx = self._choose(hello)
            reader = asyncio.StreamReader(limit=self._limit)
            protocol = asyncio.StreamReaderProtocol(reader, self._callback)
            await loop.connect_accepted_socket(lambda: protocol, conn, ssl=ctx,
                                               ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            log.debug("https listener: connection dropped before TLS was up: %r", exc)
            with contextlib.suppress(OSError):
                conn.close()


async def peek_hello(conn: socket.socket) -> ClientHello | None:
    """The ClientHello, read without consuming it (MSG_PEEK), so TLS then starts from byte 0."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())
    while True:
        data = conn.recv(clienthello.MAX_HELLO, socket.MSG_PEEK)
        if not data:
            return None
        result = clienthello.parse(data)
        if result is not clienthello.NEED_MORE:
            return result if isinstance(result, ClientHello) else None
        # The rest is on its way; the bytes already here keep the socket readable, so poll.
        await asyncio.sleep(0.01)
