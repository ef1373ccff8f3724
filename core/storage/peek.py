"""Reading the stored policy without opening the storage (``meshscale configtest``).

Opening the storage would create or migrate the database and, on PostgreSQL, take the
one-server lock that a running server holds; a check must change nothing and may run next to
the server. So a backend's ``stored_policy`` (meshscale.contributions.StorageBackend) reads the
one row directly, read-only, and says None whenever it cannot: no database yet, no policy
stored, a database it cannot reach or read. SQLite's is here; PostgreSQL's is its plugin's.
"""

from __future__ import annotations

import sqlite3

from meshscale.config import Config

LATEST_POLICY = "SELECT data FROM policies ORDER BY id DESC LIMIT 1"


def sqlite_policy(config: Config) -> str | None:
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
        row = conn.execute(LATEST_POLICY).fetchone()
    except sqlite3.Error:  # no such table (a new or foreign database), locked, unreadable
        return None
    finally:
        conn.close()
    return str(row[0]) if row is not None else None
