"""meshscale plugin: stun — a STUN responder on ``derp.server.stun_listen_addr`` (UDP).

Clients learn their public endpoints from it and measure the latency that picks their home
DERP region. The embedded DERP region advertises its port: the configured one, or, when the
configured port is 0, the port actually bound, which :func:`bound_port` returns while this
plugin runs for that config (the DERP plugin asks; the map is refreshed once STUN is up).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

from meshscale import hookimpl
from meshscale.config import split_host_port
from meshscale.plugins.stun import server as stun_server

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.context import ServerContext

log = logging.getLogger(__name__)

# One responder per running server, found by its config object (hooks receive the config or a
# context holding it). Entries go away with the config or at shutdown.
_running: dict[int, tuple[asyncio.DatagramTransport, stun_server.StunProtocol, int]] = {}


def bound_port(config: Config) -> int | None:
    """The UDP port the responder for ``config`` is bound to, or None if it is not running."""
    entry = _running.get(id(config))
    return entry[2] if entry is not None else None


@hookimpl
async def meshscale_startup(server: ServerContext) -> None:
    config = server.config
    addr = config.derp.server.stun_listen_addr
    if not config.derp.server.enabled or not addr:
        return
    host, port = split_host_port(addr)
    transport, protocol = await stun_server.start(host, port)
    actual = stun_server.bound_port(transport)
    key = id(config)
    _running[key] = (transport, protocol, actual)
    weakref.finalize(config, _running.pop, key, None)
    log.info("stun: listening on %s:%d/udp", host, actual)
    server.refresh_derp_map()


@hookimpl
def meshscale_shutdown(server: ServerContext) -> None:
    entry = _running.pop(id(server.config), None)
    if entry is not None:
        entry[0].close()
