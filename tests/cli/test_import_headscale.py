"""``meshscale import-headscale`` reads headscale databases of schema 0.23, 0.27 and 0.29
(SQLite) without changing them, brings users, nodes, pre-auth and API keys and the stored policy
over into an empty meshscale database, takes headscale's Noise key, and prints what it would do
under --dry-run. The keys headscale gave out go on working: checked here through meshscale's own
key stores, end to end with real clients in tests/interop/test_import_headscale.py."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from meshscale.auth import masked_key
from meshscale.bench.pgserver import PgServer
from meshscale.cli.main import main
from meshscale.errors import AuthError
from meshscale.state.apikeys import ApiKeys
from meshscale.state.models import Node, User
from meshscale.state.store import State
from meshscale.storage.base import Snapshot
from tests.cli.serverproc import Serve, meshscale, write_config
from tests.conftest import new_pg_database
from tests.hsdb import (
    DATA,
    VERSIONS,
    HsApiKey,
    HsKey,
    Issued,
    hashed_keys,
    open_store,
    snapshot,
    write_headscale_db,
    write_rows,
)

NOISE = "privkey:" + "ab" * 32
T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LATER = datetime(2036, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


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


def hs_keys(version: str) -> tuple[list[HsKey], list[HsApiKey]]:
    """Keys of every kind that release keeps; on 0.29 also one kept in plain text from before
    0.28. Key 7 belongs to a user headscale deleted (its user_id is dangling) and has no tags:
    left out, said why."""
    keys = [HsKey(1, 1, reusable=True, used=True),
            HsKey(2, 3, ephemeral=True, expiration=LATER),
            HsKey(4, 1, tags=("tag:ci", "tag:server")),
            HsKey(7, 99)]
    if hashed_keys(version):
        keys.append(HsKey(9, 3, plain=True))
    return keys, [HsApiKey(1, expiration=LATER, last_seen=T0),
                  HsApiKey(2)]


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
    write_headscale_db(db, version, users, nodes, '{"acls": []}', *hs_keys(version))
    before = digest(db)
    rc = main(["-c", str(config), "import-headscale", "--db", str(db), "--noise-key", str(key),
               "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.splitlines()[:5] == [
        f"would import from SQLite database {db} ("
        + {"0.23": "headscale migration 202406021630", "0.27": "headscale migration "
           "202507021200", "0.29": "headscale v0.29.2"}[version]
        + "):",
        "  users: 2 (alice, bob)",
        "  nodes: 2",
        "    2 laptop 100.64.0.1 fd7a:115c:a1e0::1",
        "    5 srv-1 100.64.0.7",
    ]
    bcrypt = 3 if hashed_keys(version) else 0
    assert f"  pre-auth keys: {bcrypt + 1 if bcrypt else 3} ({bcrypt} checked against " \
        f"headscale's bcrypt hashes, {1 if bcrypt else 3} of its plain-text keys hashed)" in out
    assert "  API keys: 2" in out
    assert "  not imported: pre-auth key 7: neither a user nor tags" in out
    assert digest(db) == before
    assert not (config.parent / "data").exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_import_brings_users_nodes_keys_policy_and_noise_key(
    version: str, setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    config, db, key = setup
    users, nodes = records()
    nodes[0].auth_key_id = 2  # the laptop registered with the ephemeral key
    issued = write_headscale_db(db, version, users, nodes, '{"acls": []}', *hs_keys(version))
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
    assert (laptop.auth_key_id, laptop.ephemeral, srv.auth_key_id) == (2, True, None)
    check_keys(config, version, snap, issued)


def check_keys(config: Path, version: str, snap: Snapshot, issued: Issued) -> None:
    """The keys came over with their flags, owners, tags and times, and the full keys headscale
    gave out pass meshscale's own checks (bcrypt where headscale kept it; re-hashed to SHA-256
    on first use); a wrong secret, or a key never issued, does not."""
    keys = {k.id: k for k in snap.keys}
    want_ids = [1, 2, 4, 9] if hashed_keys(version) else [1, 2, 4]
    assert sorted(keys) == want_ids and snap.counters["key"] == want_ids[-1]
    assert (keys[1].user_id, keys[1].reusable, keys[1].used) == (1, True, True)
    assert (keys[2].user_id, keys[2].ephemeral, keys[2].expiration) == (
        3, True, LATER)
    assert keys[4].tags == ("tag:ci", "tag:server")
    scheme = "bcrypt" if hashed_keys(version) else "sha256"
    assert [keys[i].hash_scheme for i in (1, 2, 4)] == [scheme] * 3
    assert not any(k.preauthorized for k in snap.keys)  # headscale has no pre-approved keys
    for k in snap.keys:  # no secret is stored: only hashes of it
        assert issued.auth[k.id].encode() not in k.secret_hash
        # listed as headscale lists it: hskey-auth-<prefix>-*** (0.28+); older plain keys
        # (headscale showed them whole) as <prefix>***
        full = issued.auth[k.id]
        shown = masked_key(k.key_form, k.prefix)
        if full.startswith("hskey-auth-"):
            assert shown == full[:len("hskey-auth-") + 12] + "-***"
        else:
            assert shown == full[:12] + "***"
    apis = {k.id: k for k in snap.api_keys}
    assert sorted(apis) == [1, 2] and snap.counters["apikey"] == 2
    assert (apis[1].expiration, apis[1].last_seen) == (LATER, T0)
    assert all(k.hash_scheme == "bcrypt" for k in apis.values())
    for k in apis.values():  # listed as headscale 0.29 lists them: the prefix masked
        full = issued.api[k.id]
        shown = masked_key(k.key_form, k.prefix)
        if full.startswith("hskey-api-"):
            assert shown == full[:len("hskey-api-") + 12] + "-***"
        else:
            assert shown == full[:7] + "***"  # headscale's <7>.<32> keys

    cfg, storage = open_store(config)
    try:
        state = State(cfg, storage)
        state.load(snap)
        for kid in keys:  # 1 is used but reusable
            assert state.check_auth_key(issued.auth[kid]).id == kid
            assert state.keys[kid].hash_scheme == "sha256"  # re-hashed on first use
            assert state.check_auth_key(issued.auth[kid]).id == kid
        wrong = issued.auth[4][:-1] + ("A" if issued.auth[4][-1] != "A" else "B")
        with pytest.raises(AuthError, match="invalid pre-auth key"):
            state.check_auth_key(wrong)
        api = ApiKeys(storage, snap)
        for k in apis.values():  # found by the text a listing shows
            assert api.find(masked_key(k.key_form, k.prefix)).id == k.id
        for kid, full in issued.api.items():
            assert api.check(full).id == kid
            assert api.check(full).hash_scheme == "sha256"
        with pytest.raises(AuthError):
            api.check(issued.api[1][:-1] + ("A" if issued.api[1][-1] != "A" else "B"))
        again = storage.load()  # the re-hash is stored, not only in memory
        assert {k.id: k.hash_scheme for k in again.api_keys} == {1: "sha256", 2: "sha256"}
    finally:
        storage.close()


def test_refusals(setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    config, db, key = setup
    users, nodes = records()
    write_headscale_db(db, "0.29", users, nodes)
    args = ["-c", str(config), "import-headscale", "--db", str(db), "--noise-key", str(key)]
    assert main(args) == 0
    capsys.readouterr()
    # the second time meshscale's database is not empty (and the key is headscale's already)
    assert main(args) == 1
    assert "already holds 2 user(s), 2 node(s), 0 pre-auth key(s) and 0 API key(s): import " \
        "into an empty one" in capsys.readouterr().err
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
        issued = write_rows(conn, "%s", lambda t: t, "0.29", users, nodes, '{"acls": []}',
                            *hs_keys("0.29"))
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
    check_keys(config, "0.29", snap, issued)  # bcrypt hashes read from bytea
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
