"""The HTTPS side of the main listener: peek at the ClientHello before asyncio's TLS starts.

asyncio.start_server takes one SSLContext for good. The main listener (meshscale.listener,
admission in meshscale.transport) instead asks, per accepted connection, for the context in
force when it arrives (certificate reloads and renewals need no restart), chosen from the
ClientHello, so an ACME TLS-ALPN-01 validator gets its challenge certificate while clients on
the same name keep getting the real one. Deadlines: limits.header_timeout for the ClientHello
and again for the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from meshscale.tls import clienthello
from meshscale.tls.clienthello import ClientHello

log = logging.getLogger(__name__)


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
