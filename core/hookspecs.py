"""THE plugin contract: every hook a meshscale plugin may implement.

Implement a hook with ``from meshscale import hookimpl`` and a function of the same name and
(a subset of) the same arguments. Call modes:

* "collect": core calls every implementation and uses all results (lists are concatenated).
* "notify": observe-only; core calls every implementation, ignores results, and a raising
  implementation is logged with its plugin's name and never stops the server.
* "first": the first non-None result wins, in pluggy's order (last registered first).

Hooks marked *async allowed* may be ``async def``; core awaits them. All others must be plain
functions. No hook here is ``firstresult`` in pluggy's sense: core's PluginHost does its own
dispatch, so async implementations are awaited and errors are attributed to their plugin.

docs/hooks.md documents each hook; tests/unit/test_hooks_doc.py keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from meshscale import PROJECT

if TYPE_CHECKING:
    from meshscale.auth import AuthProvider
    from meshscale.config import Config
    from meshscale.context import ServerContext
    from meshscale.contributions import (
        ConfigSection,
        HttpRoute,
        PolicyEngineSpec,
        StorageBackend,
        UpgradeRoute,
    )
    from meshscale.dns01 import Dns01Provider
    from meshscale.events import (
        MapSent,
        MapStreamEvent,
        NodeEvent,
        PolicyEvent,
        Registration,
        UserEvent,
    )

hookspec = pluggy.HookspecMarker(PROJECT)


# -- configuration and registries (collect, sync) -------------------------------------------


@hookspec
def meshscale_config_sections() -> Sequence[ConfigSection]:
    """Config sections this plugin owns (collect, sync).

    Each section is a top-level YAML key; its ``parse`` turns the raw mapping into the plugin's
    typed settings and raises ConfigError with the dotted path on bad input. Keys no core field
    and no plugin section claims are refused.
    """
    raise NotImplementedError


@hookspec
def meshscale_storage_backends() -> Sequence[StorageBackend]:
    """Storage backends this plugin provides, by name (collect, sync); ``database.type`` picks."""
    raise NotImplementedError


@hookspec
def meshscale_policy_engines() -> Sequence[PolicyEngineSpec]:
    """Policy engines this plugin provides, by name (collect, sync); ``policy.engine`` picks."""
    raise NotImplementedError


# -- the network surface (collect, sync) ----------------------------------------------------


@hookspec
def meshscale_http_upgrades(config: Config) -> Sequence[UpgradeRoute]:
    """Paths whose ``Upgrade:`` requests this plugin takes over, with the raw socket (collect)."""
    raise NotImplementedError


@hookspec
def meshscale_http_routes(config: Config) -> Sequence[HttpRoute]:
    """Plain HTTP routes this plugin serves on the main listener (collect, sync)."""
    raise NotImplementedError


@hookspec
def meshscale_derp_regions(config: Config) -> Sequence[Mapping[str, Any]]:
    """DERP regions (tailcfg.DERPRegion, wire spelling) to add to the DERP map (collect, sync).

    Called whenever core rebuilds the map: at start-up, on every ``derp.update_frequency`` tick
    and when a plugin calls ``ServerContext.refresh_derp_map()``. Regions from config files and
    URLs with the same RegionID are replaced by a plugin's.
    """
    raise NotImplementedError


# -- lifecycle (notify, async allowed) ------------------------------------------------------


@hookspec
def meshscale_startup(server: ServerContext) -> None:
    """The server is starting (async allowed). Start listeners and tasks here.

    Runs after storage is loaded and before the main listener accepts connections. A raising
    implementation stops start-up with the plugin's name in the error.
    """


@hookspec
def meshscale_shutdown(server: ServerContext) -> None:
    """The server is stopping (async allowed). Close what ``meshscale_startup`` opened."""


@hookspec
def meshscale_auth_providers(config: Config) -> Sequence[AuthProvider]:
    """Ways to log in this plugin offers (collect, sync; see meshscale.auth).

    A device without a key is sent to the AuthURL of the first provider that answers for it;
    the built-in admin page (``meshscale auth register``) comes last. The provider completes or
    refuses the login through ``server.logins()``.
    """
    raise NotImplementedError


@hookspec
def meshscale_dns01_providers(config: Config) -> Sequence[Dns01Provider]:
    """Ways to publish ACME DNS-01 TXT records for ``tailscale cert`` (collect, sync; see
    meshscale.dns01).

    A node's ``/machine/set-dns`` for its own ``_acme-challenge.<node>.<base_domain>`` goes to
    the first provider (in plugin order) whose ``serves(name)`` is true; ``set_txt`` is awaited
    with a deadline. Nodes are told certificates are available (``DNSConfig.CertDomains``) only
    when some provider is offered.
    """
    raise NotImplementedError


# -- admission (first, sync) ----------------------------------------------------------------


@hookspec
def meshscale_admit_node(
    hostname: str, user: str | None, tags: Sequence[str], method: str
) -> str | None:
    """Veto a registration: return a reason to refuse it, or None to allow (sync).

    Every implementation is asked; the first reason refuses the node. The client sees the reason
    in ``RegisterResponse.Error``.
    """


# -- observe-only events (notify, sync, must be quick) --------------------------------------
#
# Each also receives ``server`` (the ServerContext of the server that emitted it) if the
# implementation asks for it: core fills it in, so a module plugin can keep per-server state.


@hookspec
def meshscale_node_event(event: NodeEvent, server: ServerContext) -> None:
    """A node was registered, updated, expired, deleted, or went online or offline."""


@hookspec
def meshscale_user_event(event: UserEvent, server: ServerContext) -> None:
    """A user was created, renamed or deleted."""


@hookspec
def meshscale_policy_event(event: PolicyEvent, server: ServerContext) -> None:
    """A policy was loaded, or a new one was refused (the old one stays)."""


@hookspec
def meshscale_registration(event: Registration, server: ServerContext) -> None:
    """A ``/machine/register`` request finished, with its method, result and duration."""


@hookspec
def meshscale_map_sent(event: MapSent, server: ServerContext) -> None:
    """A map message (full, delta or keep-alive) was queued to one or more streams.

    ``event.seconds`` is how long core took to build it (full: compute and serialize the map;
    delta: from the change reaching the mapper to queued on every stream; keep-alive: 0).
    """


@hookspec
def meshscale_map_stream(event: MapStreamEvent, server: ServerContext) -> None:
    """A node's map stream opened or closed."""


# -- values for metrics (collect, sync, must be cheap) --------------------------------------


@hookspec
def meshscale_stats(server: ServerContext) -> Mapping[str, float]:
    """Cheap numbers this plugin offers, merged into ``ServerContext.stats()`` (collect, sync).

    Called on every ``stats()`` call (each metrics scrape), so read counters, never compute.
    Keys are lower_snake_case and start with the plugin's area (``derp_clients``). A key ending
    in ``_total`` only ever grows (a counter); any other key is a gauge. Byte amounts say
    ``bytes``. Never call ``server.stats()`` from here.
    """
    raise NotImplementedError
