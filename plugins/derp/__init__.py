"""meshscale plugin: derp — the embedded DERP relay.

Hooks: ``/derp`` upgrades and HTTP routes on the main listener, the embedded region for the DERP
map, and start-up/shutdown of the relay and its own TLS listener. See docs/derp.md.

The plugin is a module (entry point ``derp``), so per-server state lives in a ``DerpService``
found by the server's config object: hooks receive that config, or a context holding it. Two
servers in one process (tests) therefore get two independent relays.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from meshscale import hookimpl
from meshscale.contributions import HttpRoute, UpgradeRoute
from meshscale.plugins import stun
from meshscale.plugins.derp import routes
from meshscale.plugins.derp.service import DerpService

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.context import ServerContext

_services: dict[int, DerpService] = {}


def service_for(config: Config) -> DerpService:
    """The DERP service of the server running with ``config`` (made on first use)."""
    key = id(config)
    svc = _services.get(key)
    if svc is None:
        svc = _services[key] = DerpService(config)
        weakref.finalize(config, _services.pop, key, None)
    return svc


def stun_port(config: Config) -> int:
    """The STUN port to advertise: the running responder's, else the configured one, else -1."""
    bound = stun.bound_port(config)
    if bound is not None:
        return bound
    addr = config.derp.server.stun_listen_addr
    port = int(addr.rpartition(":")[2]) if addr else 0
    return port if port else -1  # -1: clients do not try STUN against this node


@hookimpl
def meshscale_http_upgrades(config: Config) -> Sequence[UpgradeRoute]:
    if not config.derp.server.enabled:
        return []
    svc = service_for(config)
    return [UpgradeRoute("/derp", frozenset({"derp", "websocket"}), svc.handle_upgrade)]


@hookimpl
def meshscale_http_routes(config: Config) -> Sequence[HttpRoute]:
    return routes.routes(service_for(config), embedded=config.derp.server.enabled)


@hookimpl
def meshscale_derp_regions(config: Config) -> Sequence[Mapping[str, Any]]:
    svc = _services.get(id(config))
    region = svc.region(stun_port(config)) if svc is not None else None
    return [region] if region is not None else []


@hookimpl
async def meshscale_startup(server: ServerContext) -> None:
    await service_for(server.config).start(server)


@hookimpl
async def meshscale_shutdown(server: ServerContext) -> None:
    svc = _services.pop(id(server.config), None)
    if svc is not None:
        await svc.stop()


@hookimpl
def meshscale_stats(server: ServerContext) -> Mapping[str, float]:
    """Relay numbers for ``ServerContext.stats()`` (the metrics plugin exports them)."""
    svc = _services.get(id(server.config))
    relay = svc.relay if svc is not None else None
    if relay is None:
        return {}
    st = relay.stats
    return {
        "derp_clients": float(relay.connection_count()),
        "derp_home_clients": float(relay.home_client_count()),
        "derp_received_bytes_total": float(st.bytes_recv),
        "derp_relayed_bytes_total": float(st.bytes_sent),
        "derp_received_packets_total": float(st.packets_recv),
        "derp_relayed_packets_total": float(st.packets_sent),
        "derp_dropped_packets_total": float(
            st.dropped_unknown_dest + st.dropped_queue_full + st.dropped_gone
        ),
    }
