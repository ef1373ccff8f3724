"""meshscale plugin: webhooks — POST signed JSON events to the URLs in the ``webhooks:`` section.

    plugins: [sqlite, derp, stun, policy, webhooks]
    webhooks:
      urls: [https://hooks.example.com/meshscale]
      secret: a-long-random-string
      timeout: 5s

Events: node.registered, node.approved, node.unapproved, node.deleted, node.online,
node.offline, user.created, policy.changed.
The hooks only build a small envelope and enqueue it (``Deliverer.offer`` never waits); one task
per URL delivers, so a slow or dead receiver never slows the server. See delivery.py for order
and the drop policy, payload.py for the body and signature.

The entry point names :class:`WebhooksPlugin`. meshscale makes one object per server (one
process may run several: tests do), so its state lives on the object, never in a module global.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshscale import hookimpl
from meshscale.context import ServerContext
from meshscale.contributions import ConfigSection
from meshscale.events import NodeEvent, PolicyEvent, UserEvent

from meshscale_webhooks import payload, settings
from meshscale_webhooks.delivery import Deliverer

__all__ = ["Webhooks", "WebhooksPlugin"]


@dataclass
class Webhooks:
    """One server's deliverers, and the sequence number its events carry."""

    deliverers: list[Deliverer]
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def emit(self, item: tuple[str, dict[str, Any]] | None) -> None:
        if item is None:
            return
        envelope = payload.Envelope(item[0], item[1], next(self.seq))
        for d in self.deliverers:
            d.offer(envelope)


class WebhooksPlugin:
    """The plugin object: meshscale makes one per server (the entry point names this class) and
    hands it the server's context, so everything per server lives on ``self``."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.running: Webhooks | None = None  # set while the server runs with URLs configured

    @hookimpl
    def meshscale_config_sections(self) -> Sequence[ConfigSection]:
        return [ConfigSection(settings.SECTION, settings.parse)]

    @hookimpl
    def meshscale_startup(self) -> None:
        cfg = self.server.config.section(settings.SECTION)
        if not isinstance(cfg, settings.WebhookSettings) or not cfg.urls:
            return  # enabled but not configured: nothing to do
        hooks = Webhooks([Deliverer(url, cfg) for url in cfg.urls])
        for d in hooks.deliverers:
            # Owned by the server: cancelled at shutdown, a crash is logged with the task name.
            self.server.spawn(d.run(), f"webhooks {d.url}")
        self.running = hooks

    @hookimpl
    def meshscale_shutdown(self) -> None:
        self.running = None

    # -- events: enqueue only --------------------------------------------------------------

    @hookimpl
    def meshscale_node_event(self, event: NodeEvent) -> None:
        if self.running is not None:
            self.running.emit(payload.from_node(event))

    @hookimpl
    def meshscale_user_event(self, event: UserEvent) -> None:
        if self.running is not None:
            self.running.emit(payload.from_user(event))

    @hookimpl
    def meshscale_policy_event(self, event: PolicyEvent) -> None:
        if self.running is not None:
            self.running.emit(payload.from_policy(event))

    @hookimpl
    def meshscale_stats(self) -> Mapping[str, float]:
        if self.running is None:
            return {}
        ds = self.running.deliverers
        return {
            "webhooks_queued": float(sum(d.queue.qsize() for d in ds)),
            "webhooks_delivered_total": float(sum(d.delivered for d in ds)),
            "webhooks_failed_total": float(sum(d.failed for d in ds)),
            "webhooks_dropped_total": float(sum(d.dropped for d in ds)),
        }
