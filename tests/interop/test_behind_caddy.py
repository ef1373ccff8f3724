"""The real Tailscale client (tailscaled) joining through docs/production.md's Caddy block: the
control protocol (/key, the /ts2021 upgrade, long-lived map streams) crosses the proxy; the two
nodes then see each other and ping."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshscale.ports import free_port
from tests.cli.test_reverse_proxy import documented_caddyfile
from tests.interop.realclients import MeshscaleProcess, caddy_binary, stop_process, wait_for
from tests.interop.tailscaled import Tailscaled, start_all, up_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[MeshscaleProcess, str]]:
    """meshscale whose server_url is a Caddy reverse proxy in front of it."""
    proxy = f"http://127.0.0.1:{free_port()}"
    srv = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"])
    # Clients are told the proxy's URL; meshscale itself listens where MeshscaleProcess put it.
    srv.config.write_text(srv.config.read_text().replace(f"server_url: {srv.url}\n",
                                                         f"server_url: {proxy}\n"))
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(documented_caddyfile(proxy, f"127.0.0.1:{srv.port}"))
    with (tmp_path / "caddy.log").open("w") as log:
        caddy = subprocess.Popen([str(caddy_binary()), "run", "--config", str(caddyfile),
                                  "--adapter", "caddyfile"], stdout=log, stderr=log,
                                 cwd=tmp_path)
    srv.start()
    try:
        srv.cli("users", "create", "alice")
        yield srv, proxy
    finally:
        srv.stop()
        stop_process(caddy)


def test_tailscaled_joins_and_pings_through_caddy(
        proxied: tuple[MeshscaleProcess, str], tailscaled: Callable[..., Tailscaled]) -> None:
    server, proxy = proxied
    key: str = server.cli("preauthkeys", "create", "--user", "alice", "--reusable",
                          "-o", "json")["key"]
    a, b = tailscaled("alpha"), tailscaled("beta")
    start_all([a, b])
    up_all([a, b], proxy, key)
    wait_for(lambda: (n := server.nodes()) and len(n) == 2 and all(x["online"] for x in n.values()),
             30, "both nodes online in meshscale")
    assert a.status()["BackendState"] == "Running"
    b_ip = server.nodes()["beta"]["ip_addresses"][0]
    wait_for(lambda: a.peers().get("beta", {}).get("Online") is True, 30, "beta online at alpha")
    assert "pong from beta" in a.cli("ping", "--until-direct=false", "-c", "3", b_ip).stdout
