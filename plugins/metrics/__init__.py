"""meshscale plugin: metrics — a Prometheus endpoint and ``/debug/`` JSON pages.

Enable with ``plugins: [..., metrics]`` (needs the ``metrics`` extra: prometheus-client). It
serves ``/metrics`` and ``/debug/{config,nodes,sessions,policy,stats}`` on
``metrics_listen_addr`` (default ``127.0.0.1:9090``; empty disables it), from its own
CollectorRegistry. Everything it knows comes from observe-only hooks and ``ServerContext``.

The entry point names :class:`MetricsPlugin`; each server makes its own, so two servers in one
process (tests) get independent metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshscale import hookimpl
from meshscale.context import ServerContext
from meshscale.errors import ConfigError
from meshscale.events import (
    MapSent,
    MapStreamEvent,
    NodeEvent,
    PolicyEvent,
    Registration,
    UserEvent,
)

if TYPE_CHECKING:
    # Imported lazily at start-up (prometheus_client, hypercorn): loading the plugin has no
    # side effects, and `meshscale plugins list` works without the extra installed.
    from meshscale.plugins.metrics.http import Listener
    from meshscale.plugins.metrics.registry import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class Exporter:
    """One server's metrics and the listener that serves them."""

    metrics: ServerMetrics
    listener: Listener

    @property
    def port(self) -> int:
        return self.listener.port


def exporter_of(server: ServerContext) -> Exporter | None:
    """The running exporter of ``server`` (tests use it for the bound port)."""
    plugin = server.plugin("metrics")
    return plugin.exporter if isinstance(plugin, MetricsPlugin) else None


class MetricsPlugin:
    """One server's exporter: made at start-up unless ``metrics_listen_addr`` is empty."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.exporter: Exporter | None = None

    @hookimpl
    async def meshscale_startup(self) -> None:
        server = self.server
        addr = server.config.metrics_listen_addr
        if not addr:
            log.info("metrics_listen_addr is empty: no metrics endpoint")
            return
        from meshscale.plugins.metrics.http import Listener, make_app  # noqa: PLC0415
        from meshscale.plugins.metrics.registry import ServerMetrics  # noqa: PLC0415

        metrics = ServerMetrics(server.stats)
        listener = Listener()
        try:
            await listener.start(make_app(server, metrics.registry), addr)
        except OSError as exc:
            raise ConfigError("metrics_listen_addr", f"cannot listen on {addr}: {exc}") from exc
        self.exporter = Exporter(metrics, listener)
        log.info("metrics on http://%s (port %d): /metrics, /debug/", addr, listener.port)

    @hookimpl
    async def meshscale_shutdown(self) -> None:
        exporter, self.exporter = self.exporter, None
        if exporter is not None:
            await exporter.listener.stop()

    # -- observe-only events: count them (quick, no I/O) ------------------------------------

    @property
    def _metrics(self) -> ServerMetrics | None:
        return self.exporter.metrics if self.exporter is not None else None

    @hookimpl
    def meshscale_map_sent(self, event: MapSent) -> None:
        if (m := self._metrics) is not None:
            m.on_map_sent(event)

    @hookimpl
    def meshscale_map_stream(self, event: MapStreamEvent) -> None:
        if (m := self._metrics) is not None:
            m.on_map_stream(event)

    @hookimpl
    def meshscale_registration(self, event: Registration) -> None:
        if (m := self._metrics) is not None:
            m.on_registration(event)

    @hookimpl
    def meshscale_node_event(self, event: NodeEvent) -> None:
        if (m := self._metrics) is not None:
            m.on_node_event(event)

    @hookimpl
    def meshscale_user_event(self, event: UserEvent) -> None:
        if (m := self._metrics) is not None:
            m.on_user_event(event)

    @hookimpl
    def meshscale_policy_event(self, event: PolicyEvent) -> None:
        if (m := self._metrics) is not None:
            m.on_policy_event(event)
