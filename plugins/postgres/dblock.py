"""One meshscale per PostgreSQL database: a session advisory lock, held on a connection of its
own for as long as the storage is open.

Two servers on one database would each keep their own copy of the tailnet in memory and write
over each other's changes (ids, addresses, keys). The lock is taken before the schema is
touched, by every process that opens the storage (``serve``, and the offline commands that
write: ``policy set --offline``, ``import-headscale``, ``db copy``), so a second one is refused
with one line. Advisory locks belong to a session: PostgreSQL drops the lock when the holder's
connection ends, however it ends, so a crashed server leaves none behind. Advisory lock keys
are per database: servers on different databases of one PostgreSQL do not meet.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg

from meshscale.errors import StorageError

log = logging.getLogger(__name__)

# The lock's key (bigint): "meshscal" in ASCII, so a DBA reading pg_locks can tell whose it is.
LOCK_KEY = int.from_bytes(b"meshscal", "big")
GRACE_S = 1.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class DatabaseLock:
    def __init__(self, name: str, params: dict[str, Any], where: str) -> None:
        self.name = name
        self.params = params
        self.where = where
        self._conn: psycopg.Connection[Any] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StorageError (one line) naming the database."""
        try:
            conn = psycopg.connect(dbname=self.name, autocommit=True, **self.params)
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to the {self.where}: {_first_line(exc)}") \
                from None
        try:
            if not _try_lock(conn):
                holder = _holder(conn)
                raise StorageError(
                    f"the {self.where} is in use by another meshscale server{holder}: one "
                    "server per database; stop that one first, or give this one a database "
                    "of its own")
        except psycopg.Error as exc:
            conn.close()
            raise StorageError(f"cannot lock the {self.where}: {_first_line(exc)}") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def check(self) -> None:
        """After the database was unreachable: the lock went with the old session if that
        connection died; take it again. Another server that took it meanwhile is logged, as
        this one's in-memory state may now differ from the database."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                conn.execute("SELECT 1")
                return  # the session, and the lock, survived
            except psycopg.Error:
                pass
        self.release()
        try:
            self.acquire()
        except StorageError as exc:
            log.error("%s (the lock was lost while the database was unreachable); stop one of "
                      "the two servers", exc)
            return
        log.warning("the %s was unreachable: its lock is held again", self.where)

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            # Unlocked before the close returns: the session's end would release it too, but
            # only when the backend gets to it, after a restart may already have asked.
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        except psycopg.Error:
            log.debug("unlocking the database failed (the session's end unlocks it)",
                      exc_info=True)
        finally:
            try:
                conn.close()
            except psycopg.Error:
                log.debug("closing the lock connection failed", exc_info=True)


def _try_lock(conn: psycopg.Connection[Any]) -> bool:
    """Try for a moment: a holder that just died (killed, its host rebooted) leaves its lock
    until its backend notices the closed connection, which takes a few milliseconds."""
    deadline = time.monotonic() + GRACE_S
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if row is not None and row[0]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _holder(conn: psycopg.Connection[Any]) -> str:
    """`` (connected from ADDR since TIME)`` for the session holding the lock, if visible."""
    try:
        row = conn.execute(
            "SELECT a.client_addr, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) AND l.classid = %s AND l.objid = %s",
            (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF)).fetchone()
    except psycopg.Error:
        return ""
    if row is None:
        return ""
    addr = "a unix socket" if row[0] is None else str(row[0])
    since = row[1].strftime("%Y-%m-%d %H:%M:%S %Z").strip() if row[1] is not None else "?"
    return f" (connected from {addr} since {since})"
