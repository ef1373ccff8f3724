"""The typed way core calls plugin hooks (as tox 4 wraps its plugin manager).

One method per hookspec in meshscale.hookspecs, named without the ``meshscale_`` prefix and with
the spec's arguments and types, so mypy checks every call site and a misspelled hook is an
attribute error, not a silent no-op. ``server`` is never passed: the host supplies its own
ServerContext. tests/unit/test_hookcalls.py checks that every spec has its method here, with the
same arguments and annotations.

The call mode of each hook (collect, first, notify; async allowed or not) is decided here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshscale.auth import AuthProvider
    from meshscale.config import Config
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


class HookCaller(Protocol):
    """The four calling modes PluginHost implements (a protocol, so this module does not import
    the PluginHost that imports it)."""

    def collect_sync(self, hook: str, **kwargs: Any) -> list[Any]: ...
    async def collect(self, hook: str, **kwargs: Any) -> list[Any]: ...
    def first(self, hook: str, **kwargs: Any) -> Any: ...
    def notify(self, hook: str, **kwargs: Any) -> None: ...


class HookCalls:
    """``host.hooks``: call a hook on every plugin of one PluginHost."""

    def __init__(self, host: HookCaller) -> None:
        self._host = host

    # -- configuration and registries (collect, sync) ---------------------------------------

    def config_sections(self) -> list[ConfigSection]:
        return self._host.collect_sync("meshscale_config_sections")

    def storage_backends(self) -> list[StorageBackend]:
        return self._host.collect_sync("meshscale_storage_backends")

    def policy_engines(self) -> list[PolicyEngineSpec]:
        return self._host.collect_sync("meshscale_policy_engines")

    # -- the network surface (collect, sync) ------------------------------------------------

    def http_upgrades(self, config: Config) -> list[UpgradeRoute]:
        return self._host.collect_sync("meshscale_http_upgrades", config=config)

    def http_routes(self, config: Config) -> list[HttpRoute]:
        return self._host.collect_sync("meshscale_http_routes", config=config)

    def derp_regions(self, config: Config) -> list[Mapping[str, Any]]:
        return self._host.collect_sync("meshscale_derp_regions", config=config)

    def auth_providers(self, config: Config) -> list[AuthProvider]:
        return self._host.collect_sync("meshscale_auth_providers", config=config)

    def dns01_providers(self, config: Config) -> list[Dns01Provider]:
        return self._host.collect_sync("meshscale_dns01_providers", config=config)

    # -- lifecycle (async allowed; errors propagate) ----------------------------------------

    async def startup(self) -> None:
        await self._host.collect("meshscale_startup")

    async def shutdown(self) -> None:
        await self._host.collect("meshscale_shutdown")

    # -- admission (first, sync) ------------------------------------------------------------

    def admit_node(
        self, hostname: str, user: str | None, tags: Sequence[str], method: str
    ) -> str | None:
        reason = self._host.first(
            "meshscale_admit_node", hostname=hostname, user=user, tags=tags, method=method
        )
        return None if reason is None else str(reason)

    # -- observe-only events (notify: errors are logged with the plugin's name) -------------

    def node_event(self, event: NodeEvent) -> None:
        self._host.notify("meshscale_node_event", event=event)

    def user_event(self, event: UserEvent) -> None:
        self._host.notify("meshscale_user_event", event=event)

    def policy_event(self, event: PolicyEvent) -> None:
        self._host.notify("meshscale_policy_event", event=event)

    def registration(self, event: Registration) -> None:
        self._host.notify("meshscale_registration", event=event)

    def map_sent(self, event: MapSent) -> None:
        self._host.notify("meshscale_map_sent", event=event)

    def map_stream(self, event: MapStreamEvent) -> None:
        self._host.notify("meshscale_map_stream", event=event)

    # -- values for metrics (collect, sync) -------------------------------------------------

    def stats(self) -> list[Mapping[str, float]]:
        return self._host.collect_sync("meshscale_stats")
