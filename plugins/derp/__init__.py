"""meshscale plugin: derp — the embedded DERP relay.

Hooks: ``/derp`` upgrades and HTTP routes on the main listener, the embedded region for the DERP
map, and start-up/shutdown of the relay and its own TLS listener. See docs/derp.md.

The entry point names :class:`DerpPlugin`; each server makes its own, so two servers in one
process (tests) get two independent relays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from meshscale import hookimpl
from meshscale.contributions import HttpRoute, UpgradeRoute
from meshscale.plugins.derp import routes
from meshscale.plugins.derp.service import DerpService
from meshscale.plugins.stun import StunPlugin

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.context import ServerContext


class DerpPlugin:
    """One server's embedded DERP relay: its service is made on first use, once the config is
    known, and lives as long as the plugin."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self._service: DerpService | None = None

    def service(self) -> DerpService:
        """The relay service (made on first use: a method, not a property, because pluggy reads
        every attribute of a plugin when it registers it, before the config exists)."""
        if self._service is None:
            self._service = DerpService(self.server.config)
        return self._service

    def stun_port(self) -> int:
        """The STUN port to advertise: the running responder's, else the configured one, else
        -1 (clients then do not try STUN against this node)."""
        stun = self.server.plugin("stun")
        bound = stun.bound_port if isinstance(stun, StunPlugin) else None
        if bound is not None:
            return bound
        addr = self.server.config.derp.server.stun_listen_addr
        port = int(addr.rpartition(":")[2]) if addr else 0
        return port if port else -1

    @hookimpl
    def meshscale_http_upgrades(self, config: Config) -> Sequence[UpgradeRoute]:
        if not config.derp.server.enabled:
            return []
        return [UpgradeRoute("/derp", frozenset({"derp", "websocket"}),
                             self.service().handle_upgrade)]

    @hookimpl
    def meshscale_http_routes(self, config: Config) -> Sequence[HttpRoute]:
        return routes.routes(self.service(), embedded=config.derp.server.enabled)

    @hookimpl
    def meshscale_derp_regions(self, config: Config) -> Sequence[Mapping[str, Any]]:
        svc = self._service
        region = svc.region(self.stun_port()) if svc is not None else None
        return [region] if region is not None else []

    @hookimpl
    async def meshscale_startup(self) -> None:
        await self.service().start(self.server)

    @hookimpl
    async def meshscale_shutdown(self) -> None:
        svc, self._service = self._service, None  # a new start makes a new service
        if svc is not None:
            await svc.stop()

    @hookimpl
    def meshscale_stats(self) -> Mapping[str, float]:
        """Relay numbers for ``ServerContext.stats()`` (the metrics plugin exports them)."""
        relay = self._service.relay if self._service is not None else None
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
