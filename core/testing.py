"""pytest plugin for plugin authors (entry point ``pytest11``): isolated in-process servers.

    async def test_my_plugin(meshscale_server_factory):
        server = await meshscale_server_factory(plugins=["sqlite", "my_plugin"])
        ...

Each server has its own data directory, a free port, and exactly the plugins named: entry-point
names, or ``(name, PluginClass)`` / ``(name, obj)`` pairs for plugins defined in the test (a class
is made once for that server). ``server.host.plugin(name)`` is a plugin's object on a server.
Servers are stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from meshscale.config import Config
from meshscale.configload import build_config
from meshscale.pluginhost import PluginHost
from meshscale.ports import free_port

ServerFactory = Callable[..., Awaitable[Any]]


def make_config(data_dir: Path, host: PluginHost, **overrides: Any) -> Config:
    """A config for tests: loopback ports, data in ``data_dir``, no DERP map refresh loop."""
    port = overrides.pop("port", None) or free_port()
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "listen_addr": f"127.0.0.1:{port}",
        "server_url": f"http://127.0.0.1:{port}",
        "derp": {"server": {"stun_listen_addr": f"127.0.0.1:{free_port()}"},
                 "auto_update_enabled": False},
    }
    for key, value in overrides.items():
        raw[key] = value
    return build_config(raw, host.hooks.config_sections())


@pytest.fixture
async def meshscale_server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    from meshscale.server import Server  # noqa: PLC0415

    servers: list[Server] = []

    async def factory(plugins: Sequence[str | tuple[str, object]] = ("sqlite",),
                      **config: Any) -> Server:
        host = PluginHost()
        names = []
        for p in plugins:
            if isinstance(p, tuple):
                host.register(p[1], p[0])
                names.append(p[0])
            else:
                host.load([p])
                names.append(p)
        cfg = make_config(tmp_path / f"server{len(servers)}", host, plugins=names, **config)
        server = Server(cfg, host)
        servers.append(server)
        await server.start()
        return server

    yield factory
    for server in servers:
        await server.stop()
