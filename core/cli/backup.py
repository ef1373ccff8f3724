"""``meshscale db backup FILE``: an online copy of the SQLite database, safe while serving.

SQLite's backup API copies a consistent snapshot page by page while the server keeps writing
(WAL mode lets the reader and the writer run side by side). The copy is written next to FILE and
renamed into place only when complete, so FILE is either the whole backup or absent.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from meshscale.config import Config
from meshscale.errors import MeshscaleError
from meshscale.storage import versioning


def backup(config: Config, target: Path) -> str:
    if config.database.type not in ("sqlite", "sqlite3"):
        raise MeshscaleError(
            f"db backup copies SQLite databases; database.type is {config.database.type!r}: "
            "use that database's own tools (PostgreSQL: pg_dump)")
    source = config.resolve(config.database.sqlite.path)
    if not source.is_file():
        raise MeshscaleError(f"no database at {source} (database.sqlite.path): nothing to back up")
    verdict = versioning.inspect_sqlite_file(source)
    refused = versioning.refusal(verdict, f"database {source}")
    if refused is not None:
        raise MeshscaleError(refused)
    if target.exists():
        raise MeshscaleError(f"{target} exists; name a new file (a backup never overwrites)")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        # Read-write open but query_only: a read-only open of a WAL database whose server is
        # stopped would leave -wal/-shm files behind.
        src = sqlite3.connect(source)
        try:
            src.execute("PRAGMA query_only = 1")
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst, pages=1024)  # in steps: the server's writes go on in between
                check = dst.execute("PRAGMA integrity_check").fetchone()
                if check is None or check[0] != "ok":
                    raise MeshscaleError(f"the copy failed its integrity check: {check}")
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(partial, target)
    except sqlite3.Error as exc:
        raise MeshscaleError(f"backup of {source} failed: {exc}") from None
    except OSError as exc:
        raise MeshscaleError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    size = target.stat().st_size
    version = verdict.version or versioning.CURRENT
    return f"backed up {source} to {target} ({size} bytes, schema version {version})"
