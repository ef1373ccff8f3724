"""docs/production.md's Caddy example in front of a real ``meshscale serve``: the control
protocol's Upgrade (/ts2021) and DERP's (/derp) pass through it. (Plain HTTP on loopback: the
TLS part is Caddy's own business.)"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from meshscale.ports import free_port
from meshscale.simclient import SimNode
from tests.cli.serverproc import Serve, meshscale, write_config
from tests.interop.realclients import caddy_binary

DOCS = Path(__file__).parents[2] / "docs" / "production.md"


def documented_caddyfile(site: str, upstream: str) -> str:
    """The Caddyfile block from docs/production.md, with its site and upstream replaced."""
    block = re.search(r"```caddyfile\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    text = block.group(1).replace("hs.example.com", site).replace("127.0.0.1:8080", upstream)
    return "{\n    admin off\n}\n" + text


def test_control_and_derp_upgrades_pass_through_the_documented_caddy(tmp_path: Path) -> None:
    proxy_port = free_port()
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    config = write_config(tmp_path, server_url=proxy_url,
                          derp={"server": {"stun_listen_addr": "127.0.0.1:0",
                                           "tls_listen_addr": ""}})
    upstream = yaml.safe_load(config.read_text())["listen_addr"]
    server = Serve(config)
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(documented_caddyfile(proxy_url, upstream))
    with (tmp_path / "caddy.log").open("w") as log:
        caddy = subprocess.Popen([str(caddy_binary()), "run", "--config", str(caddyfile),
                                  "--adapter", "caddyfile"], stdout=log, stderr=log,
                                 cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{proxy_url}/key?v=113", timeout=2).close()
                break
            except OSError:
                assert caddy.poll() is None, (tmp_path / "caddy.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "caddy.log").read_text()
                time.sleep(0.2)
        assert meshscale("-c", str(config), "users", "create", "alice").returncode == 0
        key = meshscale("-c", str(config), "preauthkeys", "create", "--user", "alice")
        assert key.returncode == 0, key.stderr
        asyncio.run(through(proxy_port, key.stdout.strip()))
    finally:
        caddy.terminate()
        caddy.wait(10)
        rc, log = server.stop()
    assert rc == 0, log


async def through(proxy_port: int, key: str) -> None:
    """Register and stream through the proxy (the /ts2021 upgrade), then upgrade to DERP."""
    node = SimNode("through-caddy")
    await node.conn.connect("127.0.0.1", proxy_port)  # /key and the /ts2021 upgrade
    assert (await node.register(key)).get("MachineAuthorized") is True
    first = await node.open_stream().next()
    assert first is not None and first["Node"]["Name"].startswith("through-caddy")

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(f"GET /derp HTTP/1.1\r\nHost: 127.0.0.1:{proxy_port}\r\n"
                 "Upgrade: DERP\r\nConnection: Upgrade\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    frame = await asyncio.wait_for(reader.readexactly(5 + 8), 10)
    assert frame[0] == 0x01 and frame[5:] == "DERP🔑".encode()  # the server-key frame
    writer.close()
