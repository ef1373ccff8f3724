"""The STUN responder: a thin asyncio DatagramProtocol around the sans-IO codec."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from meshscale.plugins.stun import codec

log = logging.getLogger(__name__)


class StunProtocol(asyncio.DatagramProtocol):
    """Answers every well-formed Binding Request with the address it came from; drops the rest."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport; not always a DatagramTransport subclass at runtime.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        req = codec.parse_binding_request(data)
        if req is None or self.transport is None:
            self.dropped += 1
            return
        ip, port = str(addr[0]), int(addr[1])
        self.transport.sendto(codec.binding_response(req.txid, ip, port), addr)
        self.answered += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (a client went away): nothing to do.
        log.debug("stun: %s", exc)


async def start(host: str, port: int) -> tuple[asyncio.DatagramTransport, StunProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        StunProtocol, local_addr=(host, port)
    )
    return transport, protocol


def bound_port(transport: asyncio.DatagramTransport) -> int:
    return int(transport.get_extra_info("sockname")[1])
