"""``meshscale db copy``: move a whole installation's database to another backend.

Every row of every table is copied in one transaction into an empty database opened by its
backend (so it gets the same schema a server would create), then both sides are read back and
compared row by row, column by column. The source is never written to.

The target is named by a URL: ``postgres://user:pass@host:port/name?sslmode=require`` (a unix
socket as ``?host=/run/postgresql``) or ``sqlite:///absolute/path.sqlite`` (``sqlite://name``
is relative to data_dir). It becomes the ``database:`` section of a config, so the backend
opens it exactly as the server will.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import peewee as pw

from meshscale.config import Config, PostgresConfig, SqliteConfig
from meshscale.configvalues import parse_ssl_mode
from meshscale.errors import MeshscaleError
from meshscale.storage import schema
from meshscale.storage.base import Storage

BATCH = 500
URL_HINT = ("postgres://USER:PASS@HOST:PORT/NAME (?host=/socket/dir, ?sslmode=MODE) or "
            "sqlite:///ABSOLUTE/PATH")


def config_for_url(config: Config, url: str) -> Config:
    """``config`` with its ``database:`` section replaced by what ``url`` names."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(url[len("sqlite://"):])
        if not path:
            raise MeshscaleError(f"no path in {url!r}; expected {URL_HINT}")
        db = dataclasses.replace(config.database, type="sqlite",
                                 sqlite=SqliteConfig(path=path))
    elif parts.scheme in ("postgres", "postgresql"):
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise MeshscaleError(f"no database name in the URL; expected {URL_HINT}")
        try:
            port = parts.port
        except ValueError:
            raise MeshscaleError(f"bad port in the URL; expected {URL_HINT}") from None
        defaults = PostgresConfig()
        pg = PostgresConfig(
            host=query.get("host") or unquote(parts.hostname or "") or defaults.host,
            port=int(query["port"]) if query.get("port", "").isdigit() else port or 5432,
            name=name,
            user=unquote(parts.username or "") or query.get("user") or defaults.user,
            password=unquote(parts.password or "") or query.get("password", ""),
            ssl=parse_ssl_mode(query.get("sslmode", "disable"), "sslmode"),
        )
        db = dataclasses.replace(config.database, type="postgres", postgres=pg)
    else:
        raise MeshscaleError(f"unsupported database URL (scheme {parts.scheme!r}); "
                             f"expected {URL_HINT}")
    return dataclasses.replace(config, database=db)


def _db(storage: Storage) -> pw.Database:
    db = getattr(storage, "db", None)
    if not isinstance(db, pw.Database):
        raise MeshscaleError("this storage backend cannot be copied row by row (not peewee)")
    return db


# Queries name their database explicitly: the models' own binding (a proxy) points at whichever
# storage was opened last, and both are open here.


def _rows(db: pw.Database, model: type[schema.BaseModel]) -> Iterator[dict[str, Any]]:
    yield from model.select().order_by(model._meta.primary_key).dicts().iterator(db)


def _same(value: Any) -> Any:
    """A column value as both backends agree on it."""
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, str) and value[:2].isdigit() and len(value) >= 19:
        try:  # SQLite may hand back a stored datetime as its text
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _count(db: pw.Database, model: type[schema.BaseModel]) -> int:
    n: int = model.select().count(db)
    return n


def copy_database(source: Storage, target: Storage, say: Callable[[str], None] = print
                  ) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target``; check all of them; counts."""
    src, dst = _db(source), _db(target)
    held = {m._meta.table_name: _count(dst, m) for m in schema.MODELS}
    if any(held.values()):
        found = ", ".join(f"{n} {t}" for t, n in held.items() if n)
        raise MeshscaleError(f"the target database is not empty ({found}); copy into a new, "
                             "empty database (nothing was written)")
    counts: dict[str, int] = {}
    with dst.atomic():
        for model in schema.MODELS:
            table = model._meta.table_name
            batch: list[dict[str, Any]] = []
            counts[table] = 0
            for row in _rows(src, model):
                batch.append(row)
                if len(batch) >= BATCH:
                    model.insert_many(batch).as_rowcount().execute(dst)
                    counts[table] += len(batch)
                    batch = []
            if batch:
                model.insert_many(batch).as_rowcount().execute(dst)
                counts[table] += len(batch)
            say(f"copied {counts[table]} rows of {table}")
        _advance_sequences(dst)
    for model in schema.MODELS:
        check_table(src, dst, model)
    return counts


def _advance_sequences(db: pw.Database) -> None:
    """Rows copied with their ids leave a PostgreSQL serial behind; the next insert would
    collide. (SQLite's autoincrement follows max(id) by itself.)"""
    if not isinstance(db, pw.PostgresqlDatabase):
        return
    for model in schema.MODELS:
        if isinstance(model._meta.primary_key, pw.AutoField):
            table = model._meta.table_name
            db.execute_sql(  # type: ignore[no-untyped-call]
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - ours
                f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM \"{table}\"")


def check_table(src: pw.Database, dst: pw.Database, model: type[schema.BaseModel]) -> None:
    table = model._meta.table_name
    theirs = _rows(dst, model)
    for mine in _rows(src, model):
        other = next(theirs, None)
        if other is None:
            raise MeshscaleError(f"check failed: {table} row {mine.get('id')} is missing in "
                                 "the target; do not use it")
        for column, value in mine.items():
            if _same(value) != _same(other.get(column)):
                raise MeshscaleError(
                    f"check failed: {table} row {mine.get('id')} column {column} differs in "
                    "the target; do not use it")
    extra = next(theirs, None)
    if extra is not None:
        raise MeshscaleError(f"check failed: the target has an extra {table} row "
                             f"{extra.get('id')}; do not use it")
