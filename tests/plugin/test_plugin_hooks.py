"""Plugin hooks end to end on in-process servers: a veto, a config section with its own HTTP
route, a plugin whose hooks raise (named in the log; the server keeps serving), and the
registries (storage backend, policy engine) and DERP regions a plugin contributes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from quart import Response

from meshscale import hookimpl
from meshscale.config import Config
from meshscale.context import ServerContext
from meshscale.contributions import (
    ConfigSection,
    HttpRoute,
    PolicyEngineSpec,
    StorageBackend,
)
from meshscale.errors import ConfigError
from meshscale.events import NodeEvent, Registration
from meshscale.policy import AllowAllEngine, PolicyEngine
from meshscale.server import Server
from meshscale.simclient import SimNode
from meshscale.storage.base import Storage
from tests.conftest import Backend

pytestmark = pytest.mark.asyncio

Factory = Callable[..., Any]


async def register(server: Server, hostname: str) -> tuple[SimNode, dict[str, Any]]:
    assert server.state is not None
    user = server.state.users.get(1) or server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    node = SimNode(hostname)
    await node.conn.connect("127.0.0.1", server.main_port)
    return node, await node.register(key)


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


class Gatekeeper:
    @hookimpl
    def meshscale_admit_node(self, hostname: str, method: str) -> str | None:
        return f"{hostname} is not welcome ({method})" if hostname.startswith("bad") else None


async def test_admit_node_veto_reaches_the_client(meshscale_server_factory: Factory,
                                                  backend: Backend) -> None:
    server: Server = await meshscale_server_factory(
        plugins=[backend.name, ("gate", Gatekeeper())], database=backend.database)
    node, resp = await register(server, "bad-laptop")
    assert "bad-laptop is not welcome" in resp.get("Error", ""), resp
    assert server.state is not None and not server.state.nodes
    await node.conn.close()
    node, resp = await register(server, "good-laptop")
    assert resp["MachineAuthorized"] is True
    await node.conn.close()
    # What the database holds says the same: only the admitted node was written.
    assert server.storage is not None
    assert [n.hostname for n in server.storage.load().nodes] == ["good-laptop"]


class Greeter:
    """Owns a ``greeting:`` config section and serves it on ``/hello``."""

    @staticmethod
    def parse(raw: Mapping[str, Any], path: str) -> str:
        text = raw.get("text", "hello")
        if not isinstance(text, str):
            raise ConfigError(f"{path}.text", "expected a string")
        return text

    @hookimpl
    def meshscale_config_sections(self) -> Sequence[ConfigSection]:
        return [ConfigSection("greeting", self.parse)]

    @hookimpl
    def meshscale_http_routes(self, config: Config) -> Sequence[HttpRoute]:
        text = str(config.section("greeting"))

        async def hello() -> Response:
            return Response(text + "\n", content_type="text/plain")

        return [HttpRoute("/hello", hello)]


async def test_config_section_and_http_route(meshscale_server_factory: Factory) -> None:
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", ("greeter", Greeter())], greeting={"text": "hi from a plugin"})
    assert server.config.section("greeting") == "hi from a plugin"
    reply = await http_get(server.main_port, "/hello")
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hi from a plugin\n")
    with pytest.raises(ConfigError, match=r"greeting\.text"):
        await meshscale_server_factory(plugins=["sqlite", ("greeter", Greeter())],
                                       greeting={"text": 42})


class Faulty:
    @hookimpl
    def meshscale_node_event(self, event: NodeEvent) -> None:
        raise RuntimeError("node hook broke")

    @hookimpl
    def meshscale_registration(self, event: Registration) -> None:
        raise ValueError("registration hook broke")

    @hookimpl
    def meshscale_stats(self) -> Mapping[str, float]:
        raise KeyError("stats hook broke")


async def test_a_raising_hook_is_named_and_the_server_keeps_serving(
    meshscale_server_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    server: Server = await meshscale_server_factory(plugins=["sqlite", ("faulty", Faulty())])
    nodes = []
    for name in ("one", "two"):
        node, resp = await register(server, name)
        assert resp["MachineAuthorized"] is True, resp
        stream = node.open_stream()
        first = await stream.next()
        assert first is not None and first["Node"]["Name"].startswith(name)
        nodes.append(node)
    messages = [r.getMessage() for r in caplog.records]
    assert any("plugin 'faulty': meshscale_node_event raised" in m for m in messages), messages
    assert any("plugin 'faulty': meshscale_registration raised" in m for m in messages)
    # stats() still answers with core's numbers, and says which plugin failed.
    stats = server.stats()
    assert stats["nodes_total"] == 2 and stats["map_streams"] == 2
    assert any("'faulty'" in (r.exc_text or "") + r.getMessage() for r in caplog.records
               if "meshscale_stats" in r.getMessage())
    for node in nodes:
        await node.conn.close()


class RecordingStorage:
    """Offers the ``sqlite`` backend in place of the built-in plugin and counts its writes."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.opened: list[tuple[Config, Storage]] = []
        self.writes = 0

    @hookimpl
    def meshscale_storage_backends(self) -> Sequence[StorageBackend]:
        return [StorageBackend("sqlite", self.open)]

    def open(self, config: Config) -> Storage:
        from meshscale.plugins.sqlite import open_sqlite

        storage = open_sqlite(config)
        apply = storage.apply

        def counted(changes: Any) -> Any:
            self.writes += 1
            return apply(changes)

        storage.apply = counted  # type: ignore[method-assign]
        self.opened.append((config, storage))
        return storage


async def test_storage_backend_is_picked_by_database_type(
    meshscale_server_factory: Factory,
) -> None:
    server: Server = await meshscale_server_factory(plugins=[("mine", RecordingStorage)])
    plugin = server.host.plugin("mine")
    assert isinstance(plugin, RecordingStorage)
    ((config, storage),) = plugin.opened  # opened once, with this server's config
    assert config is server.config and server.storage is storage
    node, resp = await register(server, "stored")
    assert resp["MachineAuthorized"] is True
    assert plugin.writes >= 2  # the user, the key, the node: all through the plugin's backend
    await node.conn.close()
    # No plugin offers the configured backend: refused at start-up, naming what is there.
    with pytest.raises(ConfigError, match=r"database\.type: unknown storage backend 'sqlite'; "
                                          r"available: none"):
        await meshscale_server_factory(plugins=["policy"])


class Isolating:
    """A policy engine under the name ``tailscale`` that lets no node see another."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.created: list[tuple[Config, PolicyEngine]] = []

    @hookimpl
    def meshscale_policy_engines(self) -> Sequence[PolicyEngineSpec]:
        return [PolicyEngineSpec("tailscale", self.create)]

    def create(self, config: Config) -> PolicyEngine:
        class Engine(AllowAllEngine):
            def visible_peers(self, node_id: int) -> list[int]:
                return []

        engine = Engine()
        self.created.append((config, engine))
        return engine


async def test_policy_engine_is_picked_by_name_and_used(meshscale_server_factory: Factory) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite", ("iso", Isolating)])
    plugin = server.host.plugin("iso")
    assert isinstance(plugin, Isolating)
    ((config, engine),) = plugin.created
    assert config is server.config and server.engine is engine
    nodes = []
    for name in ("one", "two"):
        node, resp = await register(server, name)
        assert resp["MachineAuthorized"] is True
        full = await node.open_stream().next()
        assert full is not None and not full.get("Peers"), full.get("Peers")
        nodes.append(node)
    for node in nodes:
        await node.conn.close()


class ExtraRegion:
    """Adds one DERP region; ``move`` changes its host name and asks core to rebuild the map."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.host = "derp1.plugin.example"
        self.asked: list[Config] = []

    @hookimpl
    def meshscale_derp_regions(self, config: Config) -> Sequence[Mapping[str, Any]]:
        self.asked.append(config)
        return [{"RegionID": 901, "RegionCode": "plug", "RegionName": "Plugin",
                 "Nodes": [{"Name": "901a", "RegionID": 901, "HostName": self.host}]}]

    def move(self, host: str) -> None:
        self.host = host
        self.server.refresh_derp_map()


async def test_derp_regions_reach_the_clients_map(meshscale_server_factory: Factory) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite", ("extra", ExtraRegion)])
    plugin = server.host.plugin("extra")
    assert isinstance(plugin, ExtraRegion) and plugin.asked[-1] is server.config
    node, _ = await register(server, "mapped")
    stream = node.open_stream()
    full = await stream.next()
    assert full is not None
    (derp_node,) = full["DERPMap"]["Regions"]["901"]["Nodes"]
    assert derp_node["HostName"] == "derp1.plugin.example"
    # The plugin's region changes: core asks it again and the open stream gets the new map.
    plugin.move("derp2.plugin.example")
    async with asyncio.timeout(5):
        while True:
            update = await stream.next()
            assert update is not None
            if "DERPMap" in update:
                break
    (derp_node,) = update["DERPMap"]["Regions"]["901"]["Nodes"]
    assert derp_node["HostName"] == "derp2.plugin.example"
    await node.conn.close()
