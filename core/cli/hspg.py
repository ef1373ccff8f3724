"""Reading headscale's PostgreSQL database for ``import-headscale`` (the postgres extra)."""

from __future__ import annotations

from typing import Any

from meshscale.config import PostgresConfig
from meshscale.errors import MeshscaleError


def open_postgres(pg: PostgresConfig | None, dsn: str | None) -> tuple[Any, str, str]:
    """A read-only session on headscale's PostgreSQL database, its dialect, and where it is."""
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra, only when it is needed
    except ImportError:
        raise MeshscaleError("reading headscale's PostgreSQL database needs psycopg: "
                             "pip install 'meshscale[postgres]'") from None
    try:
        if dsn is not None:
            conn = psycopg.connect(dsn, connect_timeout=10)
            where = "PostgreSQL database " + dsn.split("@")[-1]
        else:
            assert pg is not None
            conn = psycopg.connect(host=pg.host, port=pg.port or 5432, dbname=pg.name,
                                   user=pg.user, password=pg.password, sslmode=str(pg.ssl),
                                   connect_timeout=10)
            where = pg.describe()
    except psycopg.Error as exc:
        raise MeshscaleError(f"cannot open headscale's PostgreSQL database: "
                             f"{str(exc).strip().splitlines()[0]}") from None
    conn.read_only = True
    return conn, "postgres", where
