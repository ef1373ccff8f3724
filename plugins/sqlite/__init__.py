"""meshscale plugin: SQLite storage (peewee, WAL). The default backend.

Loaded like any third-party plugin: entry point ``sqlite`` in the ``meshscale`` group, naming
:class:`SqlitePlugin` (it holds nothing: the backend it offers is opened by core).
"""

from __future__ import annotations

from collections.abc import Sequence

from meshscale import files, hookimpl
from meshscale.config import Config
from meshscale.context import ServerContext
from meshscale.contributions import StorageBackend
from meshscale.errors import StorageError
from meshscale.storage.base import Storage
from meshscale.storage.peek import sqlite_policy


def open_sqlite(config: Config) -> Storage:
    # Imported here so loading the plugin module stays free of side effects.
    import peewee as pw  # noqa: PLC0415

    from meshscale.storage import versioning  # noqa: PLC0415
    from meshscale.storage.peewee_store import PeeweeStorage  # noqa: PLC0415

    path = config.resolve(config.database.sqlite.path)
    # Looked at before peewee connects: its pragmas (journal_mode=wal) would already rewrite
    # the header of a database that is not ours.
    refused = versioning.refusal(versioning.inspect_sqlite_file(path), f"database {path}")
    if refused is not None:
        raise StorageError(refused)
    files.private_file(path)  # 0600 before SQLite creates it 0644; -wal and -shm follow it
    for companion in ("-wal", "-shm"):
        files.tighten(path.with_name(path.name + companion))
    pragmas: dict[str, object] = {"foreign_keys": 1, "busy_timeout": 5000}
    if config.database.sqlite.write_ahead_log:
        # WAL keeps readers (the CLI's "configtest", backups) off the writer's back; NORMAL
        # sync is durable across process crashes, which is what a control server needs.
        pragmas.update(
            journal_mode="wal",
            synchronous="normal",
            wal_autocheckpoint=config.database.sqlite.wal_autocheckpoint,
        )
    db = pw.SqliteDatabase(str(path), pragmas=pragmas)
    return PeeweeStorage(db, f"database {path}")


class SqlitePlugin:
    def __init__(self, server: ServerContext) -> None:
        self.server = server

    @hookimpl
    def meshscale_storage_backends(self) -> Sequence[StorageBackend]:
        return [StorageBackend("sqlite", open_sqlite, sqlite_policy),
                StorageBackend("sqlite3", open_sqlite, sqlite_policy)]
