"""``meshscale import-headscale`` reads headscale databases of schema 0.23 and 0.29 (SQLite)
without changing them, brings users, nodes and the stored policy over into an empty meshscale
database, takes headscale's Noise key, and prints what it would do under --dry-run."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from meshscale.bench.pgserver import PgServer
from meshscale.cli.main import main
from meshscale.state.models import Node, User
from tests.cli.serverproc import Serve, meshscale, write_config
from tests.conftest import new_pg_database
from tests.hsdb import DATA, VERSIONS, snapshot, write_headscale_db, write_rows

NOISE = "privkey:" + "ab" * 32
T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def records() -> tuple[list[User], list[Node]]:
    users = [User(1, "alice", "Alice", "alice@example.com", "oidc", "https://sso/alice", T0),
             User(3, "bob", created_at=T0)]
    laptop = Node(2, bytes([1]) * 32, bytes([2]) * 32, "laptop", "laptop", 1, "100.64.0.1",
                  "fd7a:115c:a1e0::1", disco_key=bytes([3]) * 32, endpoints=("192.0.2.1:41641",),
                  hostinfo={"Hostname": "laptop", "OS": "linux"}, created_at=T0,
                  last_seen=T0 + timedelta(hours=1), expiry=T0 + timedelta(days=180),
                  approved_routes=("10.1.0.0/24",))
    server = Node(5, bytes([4]) * 32, bytes([5]) * 32, "srv", "srv-1", None, "100.64.0.7", None,
                  tags=("tag:server",), created_at=T0)
    return users, [laptop, server]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    config = tmp_path / "meshscale.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                      "policy": {"mode": "database"},
                                      "plugins": ["sqlite"]}))
    key = tmp_path / "hs" / "noise_private.key"
    key.parent.mkdir()
    key.write_text(NOISE + "\n")
    return config, tmp_path / "hs" / "db.sqlite", key


@pytest.mark.parametrize("version", VERSIONS)
def test_dry_run_changes_nothing(version: str, setup: tuple[Path, Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    config, db, key = setup
    users, nodes = records()
    write_headscale_db(db, version, users, nodes, policy='{"acls": []}')
    before = digest(db)
    rc = main(["-c", str(config), "import-headscale", "--db", str(db), "--noise-key", str(key),
               "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.splitlines()[:5] == [
        f"would import from SQLite database {db} ("
        + ("headscale migration 202406021630" if version == "0.23" else "headscale v0.29.2")
        + "):",
        "  users: 2 (alice, bob)",
        "  nodes: 2",
        "    2 laptop 100.64.0.1 fd7a:115c:a1e0::1",
        "    5 srv-1 100.64.0.7",
    ]
    assert "  not imported: 1 pre-auth key(s): headscale keeps bcrypt hashes" in out
    assert digest(db) == before
    assert not (config.parent / "data").exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_import_brings_users_nodes_policy_and_noise_key(
    version: str, setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    config, db, key = setup
    users, nodes = records()
    write_headscale_db(db, version, users, nodes, policy='{"acls": []}')
    before = digest(db)
    rc = main(["-c", str(config), "-o", "json", "import-headscale", "--db", str(db),
               "--noise-key", str(key)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["dry_run"] is False and summary["policy"] == "imported"
    assert digest(db) == before  # headscale's side only read

    noise = config.parent / "data" / "noise_private.key"
    assert noise.read_text().strip() == NOISE
    assert os.stat(noise).st_mode & 0o777 == 0o600

    snap = snapshot(config)
    got_users = {u.id: u for u in snap.users}
    assert sorted(got_users) == [1, 3]
    if version == "0.29":  # 0.23 had no OIDC columns
        assert (got_users[1].email, got_users[1].provider, got_users[1].provider_id) == (
            "alice@example.com", "oidc", "https://sso/alice")
    got = {n.id: n for n in snap.nodes}
    laptop, srv = got[2], got[5]
    want = nodes[0]
    for attr in ("machine_key", "node_key", "disco_key", "ipv4", "ipv6", "hostname",
                 "given_name", "user_id", "approved_routes", "created_at", "last_seen",
                 "expiry", "endpoints"):
        assert getattr(laptop, attr) == getattr(want, attr), attr
    assert laptop.hostinfo["OS"] == "linux"
    assert (srv.user_id, srv.tags, srv.ipv6) == (None, ("tag:server",), None)
    assert snap.policy == '{"acls": []}'
    assert snap.counters["node"] >= 5 and snap.counters["user"] >= 3


def test_refusals(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, db, key = setup
    users, nodes = records()
    write_headscale_db(db, "0.29", users, nodes)
    args = ["-c", str(config), "import-headscale", "--db", str(db), "--noise-key", str(key)]
    assert main(args) == 0
    capsys.readouterr()
    # the second time meshscale's database is not empty (and the key is headscale's already)
    assert main(args) == 1
    assert "already holds 2 user(s) and 2 node(s): import into an empty one" in \
        capsys.readouterr().err
    other = config.parent / "other.key"
    other.write_text("privkey:" + "cd" * 32)
    assert main([*args[:-1], str(other), "--dry-run"]) == 1
    assert "meshscale already has its own Noise key" in capsys.readouterr().err
    plain = config.parent / "plain.sqlite"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.commit()
    assert main(["-c", str(config), "import-headscale", "--db", str(plain), "--dry-run"]) == 1
    assert "not a headscale database" in capsys.readouterr().err


def test_from_headscale_config(setup: tuple[Path, Path, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    config, db, key = setup
    users, nodes = records()
    write_headscale_db(db, "0.29", users, nodes)
    hs_config = config.parent / "hs" / "config.yaml"
    stock = yaml.safe_load((Path(__file__).parent / "data" / "headscale" /
                            "config-0.29.2.yaml").read_text())
    stock["database"]["sqlite"]["path"] = str(db)
    stock["noise"]["private_key_path"] = str(key)
    hs_config.write_text(yaml.safe_dump(stock))
    rc = main(["-c", str(config), "import-headscale", "--config", str(hs_config), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"Noise key: {key} copied to {config.parent / 'data' / 'noise_private.key'}" in out


def test_import_from_headscale_postgres(
    setup: tuple[Path, Path, Path], pg_server: PgServer, capsys: pytest.CaptureFixture[str],
) -> None:
    """headscale on PostgreSQL (0.29 schema): found through its config, read in a read-only
    session, nothing changed there."""
    import psycopg

    config, _, key = setup
    section = new_pg_database(pg_server)
    pg = section["postgres"]
    users, nodes = records()
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["name"],
                         autocommit=True) as conn:
        conn.execute((DATA / "schema-0.29-postgres.sql").read_text())
        write_rows(conn, "%s", lambda t: t, "0.29", users, nodes, policy='{"acls": []}')
        before = conn.execute("SELECT count(*), max(updated_at) FROM nodes").fetchone()
    hs_config = config.parent / "hs" / "config.yaml"
    stock = yaml.safe_load((DATA / "config-0.29.2.yaml").read_text())
    stock["database"] = section
    stock["noise"]["private_key_path"] = str(key)
    hs_config.write_text(yaml.safe_dump(stock))
    rc = main(["-c", str(config), "import-headscale", "--config", str(hs_config)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    first = out.splitlines()[0]
    assert first.startswith(f"imported from PostgreSQL database {pg['name']!r} at {pg['host']}")
    assert first.endswith("(headscale v0.29.2):")
    snap = snapshot(config)
    assert sorted(u.id for u in snap.users) == [1, 3]
    got = {n.id: n for n in snap.nodes}
    assert got[2].machine_key == nodes[0].machine_key and got[2].expiry == nodes[0].expiry
    assert got[5].tags == ("tag:server",) and snap.policy == '{"acls": []}'
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"],
                         dbname=pg["name"]) as conn:
        assert conn.execute("SELECT count(*), max(updated_at) FROM nodes").fetchone() == before


def test_backfillips_gives_an_imported_node_its_missing_address(
    setup: tuple[Path, Path, Path],
) -> None:
    """srv came from a headscale with IPv4 only: after the import, ``nodes backfillips`` (as
    headscale's) gives it an IPv6 address of meshscale's prefix, and only after a yes."""
    config, db, key = setup
    users, nodes = records()
    write_headscale_db(db, "0.29", users, nodes)
    served = write_config(config.parent / "hs", policy={"mode": "database"})
    rc = main(["-c", str(served), "import-headscale", "--db", str(db), "--noise-key", str(key)])
    assert rc == 0
    server = Serve(served)
    try:
        refused = meshscale("-c", str(served), "nodes", "backfillips")
        assert refused.returncode == 1 and "add --force" in refused.stderr
        done = meshscale("-c", str(served), "nodes", "backfillips", "--force", "-o", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "changes": ["node 5 srv-1: added fd7a:115c:a1e0::2"]}
        listed = meshscale("-c", str(served), "nodes", "list", "-o", "json")
        addresses = {n["id"]: n["ip_addresses"] for n in json.loads(listed.stdout)}
        assert addresses == {2: ["100.64.0.1", "fd7a:115c:a1e0::1"],
                             5: ["100.64.0.7", "fd7a:115c:a1e0::2"]}
    finally:
        rc, log = server.stop()
    assert rc == 0, log
