"""The STUN responder over real UDP on 127.0.0.1, and the plugin's published port."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

from meshscale.config import Config, DerpConfig, DerpServerConfig
from meshscale.configvalues import HostPort
from meshscale.plugins import stun
from meshscale.plugins.stun import codec
from meshscale.plugins.stun import server as stun_server

TXID = bytes(range(1, 13))


async def _ask(port: int, data: bytes, wait: float = 2.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind(("127.0.0.1", 0))
        await loop.sock_sendto(sock, data, ("127.0.0.1", port))
        try:
            async with asyncio.timeout(wait):
                return await loop.sock_recv(sock, 2048)
        except TimeoutError:
            return None
    finally:
        sock.close()


async def test_answers_binding_request_with_the_source_address() -> None:
    transport, proto = await stun_server.start("127.0.0.1", 0)
    try:
        port = stun_server.bound_port(transport)
        reply = await _ask(port, codec.binding_request(TXID))
        assert reply is not None
        parsed = codec.parse_binding_response(reply)
        assert parsed is not None and parsed.txid == TXID and parsed.ip == "127.0.0.1"
        assert await _ask(port, b"garbage", wait=0.3) is None
        assert (proto.answered, proto.dropped) == (1, 1)
    finally:
        transport.close()


class _Ctx:
    def __init__(self, config: Config, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.refreshes = 0

    def refresh_derp_map(self) -> None:
        self.refreshes += 1

    def __getattr__(self, name: str) -> Any:  # the rest of ServerContext is not used here
        raise AttributeError(name)


async def test_plugin_publishes_the_bound_port(tmp_path: Path) -> None:
    config = Config(
        data_dir=str(tmp_path),
        derp=DerpConfig(server=DerpServerConfig(stun_listen_addr=HostPort("127.0.0.1:0"))),
    )
    ctx = _Ctx(config, tmp_path)
    plugin = stun.StunPlugin(ctx)  # type: ignore[arg-type]
    assert plugin.bound_port is None
    await plugin.meshscale_startup()
    try:
        port = plugin.bound_port
        assert port and ctx.refreshes == 1
        assert await _ask(port, codec.binding_request(TXID)) is not None
    finally:
        plugin.meshscale_shutdown()
    assert plugin.bound_port is None


async def test_plugin_disabled_when_address_empty(tmp_path: Path) -> None:
    config = Config(derp=DerpConfig(server=DerpServerConfig(stun_listen_addr=HostPort(""))))
    plugin = stun.StunPlugin(_Ctx(config, tmp_path))  # type: ignore[arg-type]
    await plugin.meshscale_startup()
    assert plugin.bound_port is None
    off = dataclasses.replace(config, derp=DerpConfig(server=DerpServerConfig(enabled=False)))
    off_plugin = stun.StunPlugin(_Ctx(off, tmp_path))  # type: ignore[arg-type]
    await off_plugin.meshscale_startup()
    assert off_plugin.bound_port is None
