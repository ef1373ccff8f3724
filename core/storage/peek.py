"""The stored policy, read without opening the storage (``meshscale configtest``).

Opening the storage would create or migrate the database and, on PostgreSQL, take the
one-server lock that a running server holds; a check must change nothing and may run next to
the server. So this reads the one row directly, read-only, and says None whenever it cannot:
no database yet, no policy stored, a database it cannot reach or read.
"""

from __future__ import annotations

import sqlite3

from meshscale.config import Config

_LATEST = "SELECT data FROM policies ORDER BY id DESC LIMIT 1"


def stored_policy(config: Config) -> str | None:
    if config.database.type in ("sqlite", "sqlite3"):
        return _sqlite(config)
    if config.database.type == "postgres":
        return _postgres(config)
    return None


def _sqlite(config: Config) -> str | None:
    path = config.resolve(config.database.sqlite.path)
    if not path.is_file():
        return None
    # With no -wal file beside it, nobody has the database open for writing: read it as
    # immutable, or SQLite would create -wal and -shm files a check must not leave behind.
    # With one (a running server), read it as a reader among others.
    wal = path.with_name(path.name + "-wal")
    mode = "ro" if wal.exists() else "ro&immutable=1"
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute(_LATEST).fetchone()
    except sqlite3.Error:  # no such table (a new or foreign database), locked, unreadable
        return None
    finally:
        conn.close()
    return str(row[0]) if row is not None else None


def _postgres(config: Config) -> str | None:
    try:
        from meshscale.plugins.postgres import stored_policy  # noqa: PLC0415
    except ImportError:
        return None
    return stored_policy(config, _LATEST)
