"""meshscale plugin: stun — a STUN responder on ``derp.server.stun_listen_addr`` (UDP).

Clients learn their public endpoints from it and measure the latency that picks their home
DERP region. The embedded DERP region advertises its port: the configured one, or, when the
configured port is 0, the port actually bound, which :attr:`StunPlugin.bound_port` holds while
the responder runs (the DERP plugin asks; the map is refreshed once STUN is up).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from meshscale import hookimpl
from meshscale.configvalues import split_host_port
from meshscale.plugins.stun import server as stun_server

if TYPE_CHECKING:
    from meshscale.context import ServerContext

log = logging.getLogger(__name__)


class StunPlugin:
    """One server's STUN responder (the entry point ``stun`` names this class)."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self._transport: asyncio.DatagramTransport | None = None
        #: The UDP port the responder is bound to; None while it is not running.
        self.bound_port: int | None = None

    @hookimpl
    async def meshscale_startup(self) -> None:
        config = self.server.config
        addr = config.derp.server.stun_listen_addr
        if not config.derp.server.enabled or not addr:
            return
        host, port = split_host_port(addr)
        self._transport, _protocol = await stun_server.start(host, port)
        self.bound_port = stun_server.bound_port(self._transport)
        log.info("stun: listening on %s:%d/udp", host, self.bound_port)
        self.server.refresh_derp_map()

    @hookimpl
    def meshscale_shutdown(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport = self.bound_port = None
