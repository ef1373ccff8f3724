"""meshscale plugin: PostgreSQL storage (peewee on psycopg 3), ``database.type: postgres``.

The schema and its migrations are SQLite's (``meshscale.storage``): one definition, two
databases. Configured by headscale's ``database.postgres.*`` keys; ``pip install
'meshscale[postgres]'`` brings the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshscale import hookimpl
from meshscale.config import Config, PostgresConfig
from meshscale.context import ServerContext
from meshscale.contributions import StorageBackend
from meshscale.errors import StorageError
from meshscale.storage.base import Storage
from meshscale.storage.peek import LATEST_POLICY

# libpq waits this long for a connection; a write never waits on a dead server longer.
CONNECT_TIMEOUT_S = 5
# A TCP connection whose data goes unacknowledged this long is dead (a cable pulled, a host
# gone): without it a write could hang for the kernel's ~15 minutes.
TCP_USER_TIMEOUT_MS = 10_000


def connect_params(pg: PostgresConfig) -> dict[str, Any]:
    """libpq connection parameters for headscale's keys (no DSN string: the password is never
    part of a text that could end up in a log)."""
    params: dict[str, Any] = {
        "host": pg.host,
        "user": pg.user,
        "sslmode": str(pg.ssl),
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": "meshscale",
    }
    if pg.port:
        params["port"] = pg.port
    if pg.password:
        params["password"] = pg.password
    if not pg.host.startswith("/"):
        params.update(keepalives=1, keepalives_idle=30, keepalives_interval=10,
                      keepalives_count=3, tcp_user_timeout=TCP_USER_TIMEOUT_MS)
    return params


def open_postgres(config: Config) -> Storage:
    try:
        import psycopg  # noqa: F401, PLC0415
    except ImportError:
        raise StorageError(
            "database.type is postgres but the PostgreSQL driver is not installed: "
            "pip install 'meshscale[postgres]'"
        ) from None
    from meshscale.plugins.postgres.store import PostgresStorage  # noqa: PLC0415

    pg = config.database.postgres
    return PostgresStorage.open(
        pg.name, connect_params(pg), pg.describe(),
        keep_idle=pg.max_idle_conns > 0, max_idle_s=float(pg.conn_max_idle_time_secs),
    )


def stored_policy(config: Config) -> str | None:
    """The stored policy, read-only and without the one-server lock, for ``configtest``
    (meshscale.storage.peek); None when it cannot be read."""
    try:
        import psycopg  # noqa: PLC0415
    except ImportError:
        return None  # check_plugin_extras reports the missing driver
    pg = config.database.postgres
    try:
        with psycopg.connect(dbname=pg.name, **connect_params(pg)) as conn:
            conn.read_only = True
            row = conn.execute(LATEST_POLICY).fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row is not None else None


class PostgresPlugin:
    """The entry point ``postgres`` names this class; it holds nothing (core opens the backend)."""

    def __init__(self, server: ServerContext) -> None:
        self.server = server

    @hookimpl
    def meshscale_storage_backends(self) -> Sequence[StorageBackend]:
        return [StorageBackend("postgres", open_postgres, stored_policy)]
