"""PluginHost: one per server. Loads the configured plugins, makes their objects, dispatches hooks.

Built-in and third-party plugins are entry points in the ``meshscale`` group, loaded exactly the
same way. Nothing loads unless the config names it, so a disabled plugin's optional dependencies
are never imported.

An entry point names a class (or any factory) taking the ServerContext; the host calls it once,
so every server has its own plugin objects and a plugin keeps its state on ``self``. A module of
plain ``@hookimpl`` functions still loads as it is (stateless plugins need nothing more). Core
calls hooks through ``host.hooks`` (meshscale.hookcalls), one typed method per hookspec.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from meshscale import PROJECT, hookspecs
from meshscale.errors import MeshscaleError, PluginError
from meshscale.hookcalls import HookCalls

if TYPE_CHECKING:
    import asyncio

    from meshscale.auth import Logins
    from meshscale.config import Config
    from meshscale.context import ServerContext
    from meshscale.tls import MainTls

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = PROJECT
HOOK_PREFIX = "meshscale_"


def available_plugins() -> dict[str, metadata.EntryPoint]:
    """Installed plugins by name (entry points in the ``meshscale`` group)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


class ServerHandle:
    """The ServerContext a PluginHost gives the plugin objects it makes, and hooks' ``server``.

    Plugins are made when they load, before the config naming them is parsed (their
    ``meshscale_config_sections`` is needed to parse it), so before the server exists. The handle
    stands for the server from the start and forwards to it once the server binds the host; used
    earlier (say in a plugin's ``__init__``) it raises RuntimeError saying so; the host reports it
    as a PluginError naming the plugin.
    """

    def __init__(self, host: PluginHost) -> None:
        self._host = host
        self._server: ServerContext | None = None

    def bind(self, server: ServerContext) -> None:
        self._server = server

    def _bound(self, member: str) -> ServerContext:
        if self._server is None:
            raise RuntimeError(
                f"ServerContext.{member} used before the server exists; "
                "use it in hooks (meshscale_startup on), not when the plugin is made")
        return self._server

    @property
    def config(self) -> Config:
        return self._bound("config").config

    @property
    def data_dir(self) -> Path:
        return self._bound("data_dir").data_dir

    def tls(self) -> MainTls | None:
        return self._bound("tls").tls()

    def node_key_known(self, node_key: bytes) -> bool:
        return self._bound("node_key_known").node_key_known(node_key)

    def derp_map(self) -> Mapping[str, Any]:
        return self._bound("derp_map").derp_map()

    def refresh_derp_map(self) -> None:
        self._bound("refresh_derp_map").refresh_derp_map()

    def stats(self) -> Mapping[str, float]:
        return self._bound("stats").stats()

    @property
    def policy_text(self) -> str | None:
        return self._bound("policy_text").policy_text

    def nodes(self) -> Sequence[Mapping[str, Any]]:
        return self._bound("nodes").nodes()

    def map_sessions(self) -> Sequence[Mapping[str, Any]]:
        return self._bound("map_sessions").map_sessions()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        return self._bound("spawn").spawn(coro, name)

    def logins(self) -> Logins:
        return self._bound("logins").logins()

    def plugin(self, name: str) -> object | None:
        return self._host.plugin(name)


def _is_a_server_context(handle: ServerHandle) -> ServerContext:
    return handle  # mypy checks here that the handle implements the whole ServerContext


class PluginHost:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._names: dict[int, str] = {}
        # What plugin objects are made with, and what hooks taking ``server`` receive.
        self.context = ServerHandle(self)
        #: The typed way to call hooks: one method per hookspec (``host.hooks.derp_regions(c)``).
        self.hooks = HookCalls(self)

    def bind(self, server: ServerContext) -> None:
        """Tie this host to the server that owns it (one host per server)."""
        self.context.bind(server)

    # -- loading -----------------------------------------------------------------------------

    def load(self, names: Iterable[str]) -> None:
        """Load plugins by entry-point name; an unknown or broken plugin is a PluginError."""
        found = available_plugins()
        for name in names:
            ep = found.get(name)
            if ep is None:
                known = ", ".join(sorted(found)) or "none"
                raise PluginError(name, f"not installed (installed plugins: {known})")
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(name, f"failed to import {ep.value}: {exc}") from exc
            self.register(obj, name)

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin under ``name`` and check its hooks.

        A class or other factory is called once with this host's ServerContext and its object is
        registered; a module or an object with hook methods is registered as it is.
        """
        if self.pm.has_plugin(name):
            raise PluginError(name, "loaded twice")
        if not isinstance(plugin, ModuleType) and callable(plugin):
            try:
                plugin = plugin(self.context)
            except Exception as exc:
                raise PluginError(name, f"cannot be made: {type(exc).__name__}: {exc}") from exc
        self._check_names(plugin, name)
        self.pm.register(plugin, name=name)
        self._names[id(plugin)] = name
        self.check_pending()

    @staticmethod
    def _check_names(plugin: object, name: str) -> None:
        for attr in dir(plugin):
            value = getattr(plugin, attr, None)
            if getattr(value, f"{PROJECT}_impl", None) is not None and not attr.startswith(
                HOOK_PREFIX
            ):
                raise PluginError(name, f"hook {attr!r} lacks the {HOOK_PREFIX!r} prefix")

    def check_pending(self) -> None:
        """Refuse hook implementations that match no spec (misspelled hooks)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin = self.plugin_name(exc.plugin)
            raise PluginError(plugin, str(exc)) from exc

    def plugin_name(self, plugin: object) -> str:
        return self._names.get(id(plugin)) or self.pm.get_name(plugin) or repr(plugin)

    def names(self) -> list[str]:
        return [self.plugin_name(p) for p in self.pm.get_plugins()]

    def plugin(self, name: str) -> object | None:
        """The plugin object registered under ``name`` (None if not loaded): the one place a
        plugin is looked up by name, for other plugins (``ServerContext.plugin``) and tests."""
        found: object | None = self.pm.get_plugin(name)
        return found

    def hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return []
        return sorted(
            caller.name for caller in (self.pm.get_hookcallers(plugin) or [])
        )

    # -- dispatch ----------------------------------------------------------------------------

    def _impls(self, hook: str) -> Sequence[Any]:
        caller = getattr(self.pm.hook, hook)
        # pluggy stores impls in call order reversed; call them in pluggy's order.
        return list(reversed(caller.get_hookimpls()))

    def _kwargs(self, impl: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "server" in impl.argnames and "server" not in kwargs:
            kwargs = {**kwargs, "server": self.context}
        return {k: kwargs[k] for k in impl.argnames}

    def _call(self, impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
        """One implementation's result; its errors become a PluginError naming the plugin."""
        try:
            return impl.function(**self._kwargs(impl, kwargs))
        except MeshscaleError as exc:  # already a person-facing sentence
            raise PluginError(self.plugin_name(impl.plugin), str(exc)) from exc
        except Exception as exc:
            name = self.plugin_name(impl.plugin)
            raise PluginError(name, f"{hook} raised {type(exc).__name__}: {exc}") from exc

    def _sync_result(self, impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
        result = self._call(impl, hook, kwargs)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: avoid the "never awaited" warning
            raise PluginError(self.plugin_name(impl.plugin), f"{hook} must not be async")
        return result

    @staticmethod
    def _gather(out: list[Any], result: Any) -> None:
        if result is None:
            return
        if isinstance(result, (list, tuple)):
            out.extend(result)
        else:
            out.append(result)

    def collect_sync(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation (sync only); concatenate list results. Errors propagate."""
        out: list[Any] = []
        for impl in self._impls(hook):
            self._gather(out, self._sync_result(impl, hook, kwargs))
        return out

    async def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Like collect_sync, but async implementations are awaited."""
        out: list[Any] = []
        for impl in self._impls(hook):
            result = self._call(impl, hook, kwargs)
            if inspect.isawaitable(result):
                try:
                    result = await result
                except MeshscaleError as exc:  # already a person-facing sentence
                    raise PluginError(self.plugin_name(impl.plugin), str(exc)) from exc
                except Exception as exc:
                    name = self.plugin_name(impl.plugin)
                    raise PluginError(
                        name, f"{hook} raised {type(exc).__name__}: {exc}") from exc
            self._gather(out, result)
        return out

    def first(self, hook: str, **kwargs: Any) -> Any:
        """The first non-None result of a sync hook, or None. Errors propagate."""
        for impl in self._impls(hook):
            result = self._sync_result(impl, hook, kwargs)
            if result is not None:
                return result
        return None

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Observe-only: call everyone, log (with the plugin's name) and swallow errors."""
        for impl in self._impls(hook):
            try:
                impl.function(**self._kwargs(impl, kwargs))
            except Exception:
                log.exception(
                    "plugin %r: %s raised; the server goes on", self.plugin_name(impl.plugin), hook
                )

    def has_impl(self, hook: str) -> bool:
        return bool(self._impls(hook))


def plugin_hooks(plugin: object) -> list[str]:
    """Names of the ``meshscale_*`` hook implementations a plugin (object, class or module)
    defines."""
    return sorted(
        attr
        for attr in dir(plugin)
        if attr.startswith(HOOK_PREFIX)
        and getattr(getattr(plugin, attr), f"{PROJECT}_impl", None) is not None
    )
