"""meshscale plugin: webhooks — POST signed JSON events to the URLs in the ``webhooks:`` section.

    plugins: [sqlite, derp, stun, policy, webhooks]
    webhooks:
      urls: [https://hooks.example.com/meshscale]
      secret: a-long-random-string
      timeout: 5s

Events: node.registered, node.deleted, node.online, node.offline, user.created, policy.changed.
The hooks only build a small envelope and enqueue it (``Deliverer.offer`` never waits); one task
per URL delivers, so a slow or dead receiver never slows the server. See delivery.py for order
and the drop policy, payload.py for the body and signature.

This module is a plugin *module*, and one process may run several servers (tests do), so its
state lives per server in ``_running``, keyed by the ``server`` every hook is given.
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

__all__ = ["Webhooks", "running_for"]


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


_running: dict[int, Webhooks] = {}


def running_for(server: ServerContext) -> Webhooks | None:
    return _running.get(id(server))


@hookimpl
def meshscale_config_sections() -> Sequence[ConfigSection]:
    return [ConfigSection(settings.SECTION, settings.parse)]


@hookimpl
def meshscale_startup(server: ServerContext) -> None:
    cfg = server.config.section(settings.SECTION)
    if not isinstance(cfg, settings.WebhookSettings) or not cfg.urls:
        return  # enabled but not configured: nothing to do
    hooks = Webhooks([Deliverer(url, cfg) for url in cfg.urls])
    for d in hooks.deliverers:
        # Owned by the server: cancelled at shutdown, a crash is logged with the task name.
        server.spawn(d.run(), f"webhooks {d.url}")
    _running[id(server)] = hooks


@hookimpl
def meshscale_shutdown(server: ServerContext) -> None:
    _running.pop(id(server), None)


# -- events: enqueue only ----------------------------------------------------------------------


@hookimpl
def meshscale_node_event(event: NodeEvent, server: ServerContext) -> None:
    if (hooks := running_for(server)) is not None:
        hooks.emit(payload.from_node(event))


@hookimpl
def meshscale_user_event(event: UserEvent, server: ServerContext) -> None:
    if (hooks := running_for(server)) is not None:
        hooks.emit(payload.from_user(event))


@hookimpl
def meshscale_policy_event(event: PolicyEvent, server: ServerContext) -> None:
    if (hooks := running_for(server)) is not None:
        hooks.emit(payload.from_policy(event))


@hookimpl
def meshscale_stats(server: ServerContext) -> Mapping[str, float]:
    hooks = running_for(server)
    if hooks is None:
        return {}
    ds = hooks.deliverers
    return {
        "webhooks_queued": float(sum(d.queue.qsize() for d in ds)),
        "webhooks_delivered_total": float(sum(d.delivered for d in ds)),
        "webhooks_failed_total": float(sum(d.failed for d in ds)),
        "webhooks_dropped_total": float(sum(d.dropped for d in ds)),
    }
