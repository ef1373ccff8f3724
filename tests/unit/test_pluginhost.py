from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from meshscale import hookimpl
from meshscale.errors import PluginError
from meshscale.pluginhost import PluginHost


class Good:
    @hookimpl
    def meshscale_derp_regions(self, config: object) -> list[dict]:
        return [{"RegionID": 900}]


def test_misspelled_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def meshscale_derp_region(self, config: object) -> list[dict]:
            return []

    with pytest.raises(PluginError, match="typo"):
        PluginHost().register(Typo(), "typo")


def test_unprefixed_hook_is_refused() -> None:
    class Unprefixed:
        @hookimpl
        def derp_regions(self) -> None:
            return None

    with pytest.raises(PluginError, match="prefix"):
        PluginHost().register(Unprefixed(), "unprefixed")


def test_collect_names_the_plugin_that_raised() -> None:
    class Broken:
        @hookimpl
        def meshscale_derp_regions(self, config: object) -> list[dict]:
            raise RuntimeError("boom")

    host = PluginHost()
    host.register(Good(), "good")
    host.register(Broken(), "broken")
    with pytest.raises(PluginError, match=r"plugin 'broken': meshscale_derp_regions raised"):
        host.collect_sync("meshscale_derp_regions", config=None)


def test_notify_logs_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    seen = []

    class Raises:
        @hookimpl
        def meshscale_user_event(self, event: object) -> None:
            raise ValueError("nope")

    class Records:
        @hookimpl
        def meshscale_user_event(self, event: object) -> None:
            seen.append(event)

    host = PluginHost()
    host.register(Raises(), "raises")
    host.register(Records(), "records")
    with caplog.at_level(logging.ERROR):
        host.notify("meshscale_user_event", event="e")
    assert seen == ["e"]
    assert "plugin 'raises'" in caplog.text


async def test_async_impls_are_awaited_in_collect() -> None:
    class Async:
        @hookimpl
        async def meshscale_startup(self, server: object) -> None:
            server.started = True  # type: ignore[attr-defined]

    host = PluginHost()
    host.register(Async(), "async")
    server = SimpleNamespace(started=False)
    await host.collect("meshscale_startup", server=server)
    assert server.started is True


def test_unknown_plugin_names_the_installed_ones() -> None:
    with pytest.raises(PluginError, match=r"installed plugins: .*sqlite"):
        PluginHost().load(["nope"])


def test_core_never_imports_plugins() -> None:
    from pathlib import Path

    core = Path(__file__).resolve().parents[2] / "core"
    offenders = [
        str(p) for p in core.rglob("*.py")
        if "meshscale.plugins" in p.read_text() and p.name != "testing.py"
    ]
    assert offenders == []


class Counter:
    """A plugin class: one object per host, made with the host's ServerContext."""

    def __init__(self, server: object) -> None:
        self.server = server
        self.events: list[object] = []

    @hookimpl
    def meshscale_user_event(self, event: object) -> None:
        self.events.append(event)

    @hookimpl
    def meshscale_stats(self) -> dict[str, float]:
        return {"counter_events_total": float(len(self.events)),
                "counter_nodes": float(self.server.stats()["nodes_total"])}  # type: ignore[attr-defined]


def test_a_class_is_made_once_per_host_with_that_hosts_context() -> None:
    one, two = PluginHost(), PluginHost()
    one.register(Counter, "counter")
    two.register(Counter, "counter")
    a, b = one.plugin("counter"), two.plugin("counter")
    assert isinstance(a, Counter) and isinstance(b, Counter) and a is not b
    assert a.server is one.context and b.server is two.context
    one.hooks.user_event("e")  # type: ignore[arg-type]
    assert a.events == ["e"] and b.events == []
    # The context forwards to the server once bound; before that it says what went wrong.
    with pytest.raises(PluginError, match=r"plugin 'counter': .*used before the server exists"):
        one.hooks.stats()
    one.bind(SimpleNamespace(stats=lambda: {"nodes_total": 3.0}))  # type: ignore[arg-type]
    assert one.hooks.stats() == [{"counter_events_total": 1.0, "counter_nodes": 3.0}]
    assert one.plugin("nope") is None and one.context.plugin("counter") is a


def test_a_factory_that_fails_is_named() -> None:
    class Needy:
        def __init__(self, server: object) -> None:
            raise ValueError("no config yet")

    with pytest.raises(PluginError, match=r"plugin 'needy': cannot be made: ValueError"):
        PluginHost().register(Needy, "needy")


def test_the_handle_forwards_every_server_context_member() -> None:
    from meshscale.context import ServerContext
    from meshscale.pluginhost import ServerHandle

    members = {n for n in vars(ServerContext) if not n.startswith("_")}
    assert members and members <= set(vars(ServerHandle))


def test_a_module_of_plain_functions_still_loads_and_gets_the_context() -> None:
    from types import ModuleType

    seen: list[object] = []
    module = ModuleType("plain_plugin")

    @hookimpl
    def meshscale_user_event(event: object, server: object) -> None:
        seen.append((event, server))

    module.meshscale_user_event = meshscale_user_event  # type: ignore[attr-defined]
    host = PluginHost()
    host.register(module, "plain")
    assert host.plugin("plain") is module  # registered as it is, not called
    host.hooks.user_event("e")  # type: ignore[arg-type]
    assert seen == [("e", host.context)]
