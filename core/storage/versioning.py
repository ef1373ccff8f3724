"""Schema versions: meshscale changes only databases it owns, and upgrades them in one step.

A meshscale database carries its schema version in the one-row table ``meshscale_schema``.
Databases written before the marker existed (the four tables ``users``, ``pre_auth_keys``,
``nodes``, ``policies`` with meshscale's columns) are version 1. Before anything is written,
the tables found are classified:

- none: a new database; the current schema is created;
- meshscale, older: the migrations from its version to ``CURRENT`` run in one transaction;
- meshscale, current: used as is;
- meshscale, newer; headscale's; anything else: refused with what was found and what to do,
  and left exactly as it was.

``classify`` is pure (tables and columns in, verdict out) so every case is unit-tested without a
database; the peewee side (``prepare``) and the read-only SQLite look (``inspect_sqlite_file``)
only gather its input and act on its verdict.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee as pw

from meshscale.errors import StorageError

MARKER_TABLE = "meshscale_schema"
CURRENT = 11

#: The tables (and a few telling columns) of schema version 1, the first release's schema.
V1_TABLES = {
    "users": {"id", "name", "display_name", "provider_id"},
    "pre_auth_keys": {"id", "prefix", "secret_hash", "tags"},
    "nodes": {"id", "machine_key", "node_key", "hostinfo", "home_derp", "approved_routes"},
    "policies": {"id", "data", "created_at"},
}
#: Tables and columns only headscale's schema has (hscontrol/db/schema.sql and its migrations).
HEADSCALE_TABLES = {"migrations", "database_versions", "api_keys", "routes", "kvs",
                    "machines", "namespaces"}
HEADSCALE_COLUMNS = {("nodes", "host_info"), ("users", "provider_identifier"),
                     ("pre_auth_keys", "hash"), ("pre_auth_keys", "key")}

Tables = Mapping[str, Set[str]]


@dataclass(frozen=True)
class Verdict:
    kind: str  # "new" | "current" | "upgrade" | "newer" | "headscale" | "unknown"
    version: int | None = None
    found: tuple[str, ...] = ()


def classify(tables: Tables, version: int | None) -> Verdict:
    """What a database holding ``tables`` (name -> column names) is; ``version`` is the value
    of the marker row, None when there is no marker table or no row."""
    names = tuple(sorted(tables))
    if not tables:
        return Verdict("new", found=names)
    if MARKER_TABLE in tables:
        if version is None:
            return Verdict("unknown", found=names)
        if version > CURRENT:
            return Verdict("newer", version, names)
        return Verdict("current" if version == CURRENT else "upgrade", version, names)
    if HEADSCALE_TABLES & set(tables) or any(
        column in tables.get(table, set()) for table, column in HEADSCALE_COLUMNS
    ):
        return Verdict("headscale", found=names)
    if set(tables) == set(V1_TABLES) and all(
        V1_TABLES[t] <= set(tables[t]) for t in V1_TABLES
    ):
        return Verdict("upgrade", 1, names)
    return Verdict("unknown", found=names)


def refusal(verdict: Verdict, where: str) -> str | None:
    """The one-line refusal for a database meshscale must not touch, or None if it may."""
    found = ", ".join(verdict.found)
    if verdict.kind == "headscale":
        return (f"{where} is a headscale database (tables: {found}); meshscale does not "
                "read or change headscale databases. Give meshscale a database of its own (a "
                "new file for database.sqlite.path, an empty database for "
                "database.postgres.name); the headscale database was left unchanged")
    if verdict.kind == "newer":
        return (f"{where} was written by a newer meshscale (schema version {verdict.version}; "
                f"this meshscale knows versions up to {CURRENT}). Upgrade meshscale, or restore "
                "the backup taken before the upgrade; the database was left unchanged")
    if verdict.kind == "unknown":
        return (f"{where} holds tables meshscale did not create (tables: {found}); refusing "
                "to change it. Give meshscale a database of its own (a new file for "
                "database.sqlite.path, an empty database for database.postgres.name); the "
                "database was left unchanged")
    return None


# -- migrations -------------------------------------------------------------------------------


def _v1_to_v2(db: pw.Database) -> None:
    """Version 2 adds the version marker; the four tables of version 1 are unchanged."""


def _v2_to_v3(db: pw.Database) -> None:
    """Version 3 adds ``id_counters``, the highest ID given out per kind, so IDs are never
    reused. Seeded with the highest IDs present: IDs freed before the upgrade cannot be known
    (at worst the most recently deleted rows' IDs are given out once more)."""
    from meshscale.storage import schema  # noqa: PLC0415 - the models bind to db now

    db.create_tables([schema.IdCounterRow])
    for name, table in (("user", "users"), ("key", "pre_auth_keys"), ("node", "nodes")):
        row = _sql(db, f'SELECT MAX(id) FROM "{table}"').fetchone()  # noqa: S608 - ours
        if row is not None and row[0] is not None:
            schema.IdCounterRow.insert(name=name, value=int(row[0])).as_rowcount().execute(db)


def _v3_to_v4(db: pw.Database) -> None:
    """Version 4 adds ``meshscale_api_keys``, the keys of /api/v1 (named apart from headscale's
    ``api_keys``, which marks a headscale database)."""
    from meshscale.storage import schema  # noqa: PLC0415 - the models bind to db now

    db.create_tables([schema.ApiKeyRow])


def _v4_to_v5(db: pw.Database) -> None:
    """Version 5 adds the login provider's picture and groups to ``users`` (OIDC)."""
    _sql(db, "ALTER TABLE \"users\" ADD COLUMN \"picture\" TEXT NOT NULL DEFAULT ''")
    _sql(db, "ALTER TABLE \"users\" ADD COLUMN \"groups\" TEXT NOT NULL DEFAULT '[]'")


def _v5_to_v6(db: pw.Database) -> None:
    """Version 6 names how each key's secret is hashed (``hash_scheme``): keys imported from
    headscale keep its bcrypt hashes; every key there was is SHA-256. (An upgrade from before
    version 4 made ``meshscale_api_keys`` from today's model, with the column already.)"""
    for table in ("pre_auth_keys", "meshscale_api_keys"):
        if "hash_scheme" not in {c.name for c in db.get_columns(table)}:
            _sql(db, f'ALTER TABLE "{table}" ADD COLUMN "hash_scheme" VARCHAR(255) NOT NULL '
                     "DEFAULT 'sha256'")


def _v6_to_v7(db: pw.Database) -> None:
    """Version 7 adds ``nodes.approved`` (device approval, ``node.approval: manual``); the
    nodes there were are approved. The column's type is the one peewee's BooleanField makes on
    each database (BOOLEAN on PostgreSQL, INTEGER on SQLite), so an upgraded database has the
    schema a new one gets."""
    kind = ("BOOLEAN NOT NULL DEFAULT TRUE" if isinstance(db, pw.PostgresqlDatabase)
            else "INTEGER NOT NULL DEFAULT 1")
    _sql(db, f'ALTER TABLE "nodes" ADD COLUMN "approved" {kind}')


def _v7_to_v8(db: pw.Database) -> None:
    """Version 8 adds ``meshscale_settings``, settings changed through the admin API (DNS)."""
    from meshscale.storage import schema  # noqa: PLC0415 - the models bind to db now

    db.create_tables([schema.SettingRow])


def _v8_to_v9(db: pw.Database) -> None:
    """Version 9 adds ``pre_auth_keys.key_form``, what the full key starts with, so listings
    show it masked as headscale does. Keys still holding headscale's bcrypt hash, or whose
    12-character prefix is not hex (ours always is), came from headscale 0.28+; the rest are
    taken as ours (a plain-text key of headscale before 0.28, imported and used since, cannot
    be told apart and is listed as mskey-auth-<prefix>-***)."""
    _sql(db, 'ALTER TABLE "pre_auth_keys" ADD COLUMN "key_form" VARCHAR(255) NOT NULL '
             "DEFAULT 'mskey-auth-'")
    hexdigits = set("0123456789abcdef")
    rows = _sql(db, 'SELECT id, prefix, hash_scheme FROM "pre_auth_keys"').fetchall()
    for key_id, prefix, scheme in rows:
        if scheme == "bcrypt" or (len(str(prefix)) == 12 and not set(str(prefix)) <= hexdigits):
            _sql(db, f'UPDATE "pre_auth_keys" SET "key_form" = {db.param} '  # noqa: S608
                     f"WHERE id = {db.param}", ("hskey-auth-", key_id))


def _v9_to_v10(db: pw.Database) -> None:
    """Version 10 adds ``pre_auth_keys.preauthorized`` (pre-approved keys: their nodes skip
    device approval); the keys there were are not. Typed as peewee's BooleanField makes it."""
    kind = ("BOOLEAN NOT NULL DEFAULT FALSE" if isinstance(db, pw.PostgresqlDatabase)
            else "INTEGER NOT NULL DEFAULT 0")
    _sql(db, f'ALTER TABLE "pre_auth_keys" ADD COLUMN "preauthorized" {kind}')


def _v10_to_v11(db: pw.Database) -> None:
    """Version 11 adds ``meshscale_api_keys.key_form``, what the full key starts with, so
    listings show it masked as headscale 0.29 does (as version 9 did for pre-auth keys). A
    7-character prefix is headscale's older ``<7>.<32>`` form (""); a key still holding
    headscale's bcrypt hash, or whose 12-character prefix is not hex (ours always is), came from
    headscale 0.28+; the rest are taken as ours. (An upgrade from before version 4 made the table
    from today's model, with the column already, and empty.)"""
    if "key_form" in {c.name for c in db.get_columns("meshscale_api_keys")}:
        return
    _sql(db, 'ALTER TABLE "meshscale_api_keys" ADD COLUMN "key_form" VARCHAR(255) NOT NULL '
             "DEFAULT 'mskey-api-'")
    hexdigits = set("0123456789abcdef")
    rows = _sql(db, 'SELECT id, prefix, hash_scheme FROM "meshscale_api_keys"').fetchall()
    for key_id, prefix, scheme in rows:
        text = str(prefix)
        if len(text) != 12:
            form = ""
        elif scheme == "bcrypt" or not set(text) <= hexdigits:
            form = "hskey-api-"
        else:
            continue
        _sql(db, f'UPDATE "meshscale_api_keys" SET "key_form" = {db.param} '  # noqa: S608
                 f"WHERE id = {db.param}", (form, key_id))


#: MIGRATIONS[n] turns a version-n database into version n + 1.
MIGRATIONS: dict[int, Callable[[pw.Database], None]] = {1: _v1_to_v2, 2: _v2_to_v3,
                                                         3: _v3_to_v4, 4: _v4_to_v5,
                                                         5: _v5_to_v6, 6: _v6_to_v7,
                                                         7: _v7_to_v8, 8: _v8_to_v9,
                                                         9: _v9_to_v10, 10: _v10_to_v11}


# -- acting on a live database ----------------------------------------------------------------


def _sql(db: pw.Database, sql: str, params: tuple[object, ...] = ()) -> Any:
    return db.execute_sql(sql, params)  # type: ignore[no-untyped-call]


def _tables(db: pw.Database) -> dict[str, set[str]]:
    return {t: {c.name for c in db.get_columns(t)} for t in db.get_tables()}


def _marker_version(db: pw.Database, tables: Tables) -> int | None:
    if MARKER_TABLE not in tables:
        return None
    row = _sql(db, f'SELECT version FROM "{MARKER_TABLE}" LIMIT 1').fetchone()  # noqa: S608
    return int(row[0]) if row is not None and row[0] is not None else None


def _write_marker(db: pw.Database, version: int) -> None:
    _sql(db, f'CREATE TABLE IF NOT EXISTS "{MARKER_TABLE}" '
             "(version INTEGER NOT NULL, updated_at VARCHAR(40) NOT NULL)")
    _sql(db, f'DELETE FROM "{MARKER_TABLE}"')  # noqa: S608
    p = db.param
    _sql(db, f'INSERT INTO "{MARKER_TABLE}" (version, updated_at) VALUES ({p}, {p})',  # noqa: S608
             (version, datetime.now(UTC).isoformat()))


def prepare(db: pw.Database, create: Callable[[], None], where: str) -> Verdict:
    """Bring ``db`` to the current schema in one transaction, or refuse leaving it untouched.
    ``create`` makes the current tables (on a new database)."""
    with db.atomic():
        tables = _tables(db)
        verdict = classify(tables, _marker_version(db, tables))
        message = refusal(verdict, where)
        if message is not None:
            raise StorageError(message)
        if verdict.kind == "new":
            create()
            _write_marker(db, CURRENT)
        elif verdict.kind == "upgrade":
            assert verdict.version is not None
            for version in range(verdict.version, CURRENT):
                MIGRATIONS[version](db)
            _write_marker(db, CURRENT)
    return verdict


def inspect_sqlite_file(path: Path) -> Verdict:
    """Classify a SQLite file without changing it (no pragmas, no journal-mode switch: those
    rewrite the header of a foreign database). A missing or empty file is a new database."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return Verdict("new")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the database {path}: {exc}") from None
    try:
        conn.execute("PRAGMA query_only = 1")
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        tables = {name: {c[1] for c in conn.execute(f'PRAGMA table_info("{name}")')}
                  for (name,) in rows}
        version = None
        if MARKER_TABLE in tables:
            row = conn.execute(f'SELECT version FROM "{MARKER_TABLE}" LIMIT 1').fetchone()  # noqa: S608
            version = int(row[0]) if row is not None and row[0] is not None else None
    except sqlite3.OperationalError as exc:  # locked, unreadable, read-only WAL files, ...
        raise StorageError(f"cannot read the database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise StorageError(
            f"{path} is not a SQLite database ({exc}); point database.sqlite.path at a new "
            "file or a meshscale database; the file was left unchanged"
        ) from None
    finally:
        conn.close()
    return classify(tables, version)
