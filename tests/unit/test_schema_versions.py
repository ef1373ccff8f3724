"""The database carries its schema version; meshscale changes only databases it owns.

Real SQLite files throughout: a headscale-shaped database, a newer meshscale one and an unknown
one are refused byte for byte unchanged; a version-1 database (the schema before the version
marker, written here with that schema's own DDL) is upgraded in one transaction, losing nothing.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshscale.config import Config, DatabaseConfig, SqliteConfig
from meshscale.errors import StorageError
from meshscale.plugins.sqlite import open_sqlite
from meshscale.state.models import ApiKey, Node, PreAuthKey, User
from meshscale.storage import versioning
from meshscale.storage.base import PutApiKey, PutKey, PutNode, PutPolicy, PutUser
from meshscale.storage.versioning import CURRENT, Verdict, classify

DATA = Path(__file__).parent / "data"


def config_for(path: Path) -> Config:
    return Config(data_dir=str(path.parent),
                  database=DatabaseConfig(sqlite=SqliteConfig(path=str(path))))


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def tables_of(path: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall() for n in names}
    conn.close()
    return out


# -- classification (pure) -----------------------------------------------------------------


def test_classify_every_kind() -> None:
    v1 = {t: set(c) for t, c in versioning.V1_TABLES.items()}
    assert classify({}, None) == Verdict("new")
    assert classify({**v1, "meshscale_schema": {"version"}}, CURRENT).kind == "current"
    assert classify(v1, None) == Verdict("upgrade", 1, tuple(sorted(v1)))
    assert classify({**v1, "meshscale_schema": {"version"}}, CURRENT + 1).kind == "newer"
    assert classify({"meshscale_schema": {"version"}}, None).kind == "unknown"
    assert classify({**v1, "migrations": {"id"}}, None).kind == "headscale"
    assert classify({"nodes": {"id", "host_info"}}, None).kind == "headscale"
    assert classify({"users": {"id", "name"}}, None).kind == "unknown"
    assert classify({**v1, "extra": {"x"}}, None).kind == "unknown"


# -- refusals: the file is left exactly as it was --------------------------------------------


def test_a_headscale_database_is_refused_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "headscale.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript((DATA / "headscale_schema.sql").read_text())
    conn.close()
    before = files(tmp_path)
    with pytest.raises(StorageError) as err:
        open_sqlite(config_for(db))
    assert str(err.value) == (
        f"database {db} is a headscale database (tables: api_keys, database_versions, "
        "migrations, nodes, policies, pre_auth_keys, users); meshscale does not read or change "
        "headscale databases. Give meshscale a database of its own (a new file for "
        "database.sqlite.path, an empty database for database.postgres.name); the headscale "
        "database was left unchanged")
    assert files(tmp_path) == before  # no byte changed, no -wal/-shm left behind


def test_a_database_of_a_newer_meshscale_is_refused_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    open_sqlite(config_for(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meshscale_schema SET version = ?", (CURRENT + 1,))
    conn.close()
    before = files(tmp_path)
    with pytest.raises(StorageError) as err:
        open_sqlite(config_for(db))
    assert str(err.value) == (
        f"database {db} was written by a newer meshscale (schema version {CURRENT + 1}; this "
        f"meshscale knows versions up to {CURRENT}). Upgrade meshscale, or restore the backup "
        "taken before the upgrade; the database was left unchanged")
    assert files(tmp_path) == before


def test_an_unknown_database_is_refused_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "other.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.close()
    before = files(tmp_path)
    with pytest.raises(StorageError) as err:
        open_sqlite(config_for(db))
    assert str(err.value) == (
        f"database {db} holds tables meshscale did not create (tables: invoices); refusing to "
        "change it. Give meshscale a database of its own (a new file for database.sqlite.path, "
        "an empty database for database.postgres.name); the database was left unchanged")
    assert files(tmp_path) == before


def test_a_file_that_is_not_sqlite_is_refused_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("not a database\n" * 100)
    before = files(tmp_path)
    with pytest.raises(StorageError) as err:
        open_sqlite(config_for(db))
    assert str(err.value) == (
        f"{db} is not a SQLite database (file is not a database); point database.sqlite.path "
        "at a new file or a meshscale database; the file was left unchanged")
    assert files(tmp_path) == before


# -- upgrades --------------------------------------------------------------------------------


def write_version_1(db: Path) -> None:
    """A database as the version-1 code left it: its DDL, and rows as it wrote them."""
    with sqlite3.connect(db) as conn:
        conn.executescript((DATA / "schema_v1.sql").read_text())
        conn.execute("INSERT INTO users VALUES (1, 'alice', 'Alice', 'a@example.com', '', '', "
                     "'2026-01-02 03:04:05.000006')")
        conn.execute("INSERT INTO pre_auth_keys VALUES (1, 'mskey-auth-abc', ?, 1, 1, 0, 1, "
                     "'2027-01-01 00:00:00', '2026-01-02 03:04:05', '[\"tag:ci\"]')",
                     (b"\x01" * 32,))
        conn.execute(
            "INSERT INTO nodes VALUES (7, ?, ?, ?, 'laptop', 'laptop', 1, '[]', '100.64.0.1', "
            "'fd7a:115c:a1e0::1', '{\"OS\": \"linux\"}', '[\"192.0.2.1:41641\"]', 999, "
            "'2026-01-02 03:04:05', NULL, NULL, 1, 0, 'authkey', '[\"10.0.0.0/24\"]', 113)",
            (b"\x02" * 32, b"\x03" * 32, b"\x04" * 32))
        conn.execute("INSERT INTO policies VALUES (1, '{\"acls\": []}', '2026-01-02 03:04:05')")
    conn.close()


def test_a_version_1_database_is_upgraded_losing_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    write_version_1(db)
    old = tables_of(db)
    assert versioning.inspect_sqlite_file(db).version == 1

    storage = open_sqlite(config_for(db))
    snap = storage.load()
    storage.close()

    new = tables_of(db)
    assert new.pop("meshscale_schema")[0][0] == CURRENT
    # Version 3: the ID high-water marks, seeded with the highest IDs present.
    assert new.pop("id_counters") == [("key", 1), ("node", 7), ("user", 1)]
    assert new.pop("meshscale_api_keys") == []  # version 4
    assert new.pop("meshscale_settings") == []  # version 8
    # Version 5: users gain picture and groups, empty for the users there were.
    assert [row[-2:] for row in new["users"]] == [("", "[]")]
    new["users"] = [row[:-2] for row in new["users"]]
    # Version 6: every key there was is a SHA-256 one; version 9: and one of ours; version 10:
    # not pre-approved.
    assert [row[-3:] for row in new["pre_auth_keys"]] == [("sha256", "mskey-auth-", 0)]
    new["pre_auth_keys"] = [row[:-3] for row in new["pre_auth_keys"]]
    # Version 7: nodes gain "approved", true for the nodes there were.
    assert [row[-1] for row in new["nodes"]] == [1]
    new["nodes"] = [row[:-1] for row in new["nodes"]]
    assert new == old  # every row of every table, as it was
    (user,) = snap.users
    assert (user.id, user.name, user.email) == (1, "alice", "a@example.com")
    assert (user.picture, user.groups) == ("", ())
    (key,) = snap.keys
    assert (key.prefix, key.used, key.tags, key.hash_scheme, key.preauthorized) == (
        "mskey-auth-abc", True, ("tag:ci",), "sha256", False)
    (node,) = snap.nodes
    assert (node.id, node.given_name, node.ipv4, node.hostinfo, node.approved_routes,
            node.capver, node.approved) == (7, "laptop", "100.64.0.1", {"OS": "linux"},
                                            ("10.0.0.0/24",), 113, True)
    assert snap.policy == '{"acls": []}'
    assert versioning.inspect_sqlite_file(db) == Verdict(
        "current", CURRENT,
        tuple(sorted([*old, "meshscale_schema", "id_counters", "meshscale_api_keys",
                      "meshscale_settings"])))


def test_version_9_tells_keys_imported_from_headscale_0_28_from_ours(tmp_path: Path) -> None:
    """Keys written before version 9: one still holding headscale's bcrypt hash and one whose
    prefix is not hex are headscale 0.28+'s (hskey-auth-), a hex prefix with SHA-256 is ours."""
    db = tmp_path / "db.sqlite"
    storage = open_sqlite(config_for(db))
    now = datetime.now(UTC)
    storage.apply([PutUser(User(1, "bob")),
                   PutKey(PreAuthKey(1, "0123456789ab", b"h", 1, created_at=now)),
                   PutKey(PreAuthKey(2, "Ab_-CdEfGhIj", b"h", 1, created_at=now)),
                   PutKey(PreAuthKey(3, "fedcba987654", b"$2a$", 1, created_at=now,
                                     hash_scheme="bcrypt"))])
    storage.close()
    with sqlite3.connect(db) as conn:
        conn.execute('ALTER TABLE "pre_auth_keys" DROP COLUMN "preauthorized"')
        conn.execute('ALTER TABLE "pre_auth_keys" DROP COLUMN "key_form"')
        conn.execute("UPDATE meshscale_schema SET version = 8")
    conn.close()
    storage = open_sqlite(config_for(db))
    forms = [k.key_form for k in storage.load().keys]
    storage.close()
    assert forms == ["mskey-auth-", "hskey-auth-", "hskey-auth-"]
    assert versioning.inspect_sqlite_file(db).version == CURRENT


def test_version_11_tells_api_keys_imported_from_headscale_from_ours(tmp_path: Path) -> None:
    """API keys written before version 11: a 7-character prefix is headscale's <7>.<32> form,
    one still holding headscale's bcrypt hash or whose 12-character prefix is not hex is
    headscale 0.28+'s (hskey-api-), a hex prefix with SHA-256 is ours (mskey-api-)."""
    db = tmp_path / "db.sqlite"
    storage = open_sqlite(config_for(db))
    storage.apply([PutApiKey(ApiKey(1, "0123456789ab", b"h")),
                   PutApiKey(ApiKey(2, "Ab_-CdEfGhIj", b"h")),
                   PutApiKey(ApiKey(3, "fedcba987654", b"$2a$", hash_scheme="bcrypt")),
                   PutApiKey(ApiKey(4, "aB-_9xZ", b"h"))])
    storage.close()
    with sqlite3.connect(db) as conn:
        conn.execute('ALTER TABLE "meshscale_api_keys" DROP COLUMN "key_form"')
        conn.execute("UPDATE meshscale_schema SET version = 10")
    conn.close()
    storage = open_sqlite(config_for(db))
    forms = [k.key_form for k in storage.load().api_keys]
    storage.close()
    assert forms == ["mskey-api-", "hskey-api-", "hskey-api-", ""]
    assert versioning.inspect_sqlite_file(db).version == CURRENT


def test_a_failing_migration_changes_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db.sqlite"
    write_version_1(db)
    old = tables_of(db)

    def broken(database: object) -> None:
        database.execute_sql("CREATE TABLE half_done (x INTEGER)")  # type: ignore[attr-defined]
        raise RuntimeError("migration bug")

    monkeypatch.setitem(versioning.MIGRATIONS, 1, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        open_sqlite(config_for(db))
    assert tables_of(db) == old  # the transaction took the half-done step back


def test_the_current_schema_is_version_1_plus_the_marker_and_id_counters(
        tmp_path: Path) -> None:
    """Changing the models changes the schema: that needs CURRENT + 1 and a migration in
    meshscale.storage.versioning (and this test's expectation updated)."""
    fresh, old = tmp_path / "fresh.sqlite", tmp_path / "old.sqlite"
    storage = open_sqlite(config_for(fresh))
    storage.apply([PutUser(User(1, "bob")), PutPolicy("{}"),
                   PutKey(PreAuthKey(1, "p", b"h", 1, created_at=datetime.now(UTC))),
                   PutNode(Node(1, b"m", b"n", "h", "h", 1, None, None))])
    storage.close()
    write_version_1(old)

    def ddl(path: Path) -> set[str]:
        with sqlite3.connect(path) as conn:
            rows = {r[0] for r in conn.execute("SELECT sql FROM sqlite_master WHERE sql NOT NULL")}
        conn.close()
        return rows

    assert CURRENT == 11
    users_v1 = next(d for d in ddl(old) if d.startswith('CREATE TABLE "users"'))
    users_now = next(d for d in ddl(fresh) if d.startswith('CREATE TABLE "users"'))
    # Version 5: the login provider's picture and groups (OIDC).
    assert users_now == users_v1.removesuffix(")") + (
        ', "picture" TEXT NOT NULL, "groups" TEXT NOT NULL)')
    keys_v1 = next(d for d in ddl(old) if d.startswith('CREATE TABLE "pre_auth_keys"'))
    keys_now = next(d for d in ddl(fresh) if d.startswith('CREATE TABLE "pre_auth_keys"'))
    # Version 6: how each key's secret is hashed (headscale's bcrypt for imported keys);
    # version 9: what the full key starts with (listings mask it); version 10: pre-approved.
    assert keys_now == keys_v1.removesuffix(")") + (
        ', "hash_scheme" VARCHAR(255) NOT NULL, "key_form" VARCHAR(255) NOT NULL, '
        '"preauthorized" INTEGER NOT NULL)')
    nodes_v1 = next(d for d in ddl(old) if d.startswith('CREATE TABLE "nodes"'))
    nodes_now = next(d for d in ddl(fresh) if d.startswith('CREATE TABLE "nodes"'))
    # Version 7: device approval.
    assert nodes_now == nodes_v1.removesuffix(")") + ', "approved" INTEGER NOT NULL)'
    assert ddl(fresh) - ddl(old) - {users_now, keys_now, nodes_now} == {
        'CREATE TABLE "meshscale_api_keys" ("id" INTEGER NOT NULL PRIMARY KEY, "prefix" '
        'VARCHAR(255) NOT NULL, "secret_hash" BLOB NOT NULL, "expiration" DATETIME, '
        '"created_at" DATETIME NOT NULL, "last_seen" DATETIME, '
        '"hash_scheme" VARCHAR(255) NOT NULL, "key_form" VARCHAR(255) NOT NULL)',
        'CREATE UNIQUE INDEX "apikeyrow_prefix" ON "meshscale_api_keys" ("prefix")',
        'CREATE TABLE "meshscale_schema" '
        "(version INTEGER NOT NULL, updated_at VARCHAR(40) NOT NULL)",
        'CREATE TABLE "id_counters" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
        '"value" INTEGER NOT NULL)',
        # Version 8: settings changed through the admin API (DNS).
        'CREATE TABLE "meshscale_settings" ("name" VARCHAR(255) NOT NULL PRIMARY KEY, '
        '"value" TEXT NOT NULL, "updated_at" DATETIME NOT NULL)'}
    assert ddl(old) - {users_v1, keys_v1, nodes_v1} <= ddl(fresh)
