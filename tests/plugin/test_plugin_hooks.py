"""Plugin hooks end to end on in-process servers: a veto, a config section with its own HTTP
route, and a plugin whose hooks raise (named in the log; the server keeps serving)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from quart import Response

from meshscale import hookimpl
from meshscale.config import Config
from meshscale.contributions import ConfigSection, HttpRoute
from meshscale.errors import ConfigError
from meshscale.events import NodeEvent, Registration
from meshscale.server import Server
from meshscale.simclient import SimNode

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


async def test_admit_node_veto_reaches_the_client(meshscale_server_factory: Factory) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite", ("gate", Gatekeeper())])
    node, resp = await register(server, "bad-laptop")
    assert "bad-laptop is not welcome" in resp.get("Error", ""), resp
    assert server.state is not None and not server.state.nodes
    await node.conn.close()
    node, resp = await register(server, "good-laptop")
    assert resp["MachineAuthorized"] is True
    await node.conn.close()


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
