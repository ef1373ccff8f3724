"""PostgreSQL storage: the shared peewee storage plus what a networked database needs.

- One connection, shared by the start-up load and the writes (every write comes from the event
  loop, one transaction at a time; more connections would only sit idle).
- A connection lost under a write (the database restarted, a proxy dropped it) is replaced and
  the write repeated once at once. Repeating is safe: every op is an upsert or a delete by
  primary key, so a transaction that did commit before the connection broke lands the same rows
  again (a repeated PutPolicy adds the same text as the latest policy row, which is harmless).
- If the database cannot be reached, the write fails with StorageError (the state changes
  nothing, the client or admin gets the message), and a background thread tries to connect with
  exponential backoff. Until it succeeds, writes fail at once instead of each waiting for a
  connect timeout on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import peewee as pw
import psycopg

from meshscale.errors import StorageError
from meshscale.plugins.postgres.dblock import DatabaseLock
from meshscale.storage.base import Op
from meshscale.storage.peewee_store import PeeweeStorage

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class PostgresStorage(PeeweeStorage):
    def __init__(self, db: pw.Database, params: dict[str, Any], where: str,
                 keep_idle: bool = True, max_idle_s: float = 0.0,
                 lock: DatabaseLock | None = None) -> None:
        self.where = where
        self._db_lock = lock
        self._params = params
        self._keep_idle = keep_idle
        self._max_idle_s = max_idle_s
        self._last_used = time.monotonic()
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic; None while the database is reachable
        self._down_error = ""
        self._closing = threading.Event()
        self._prober: threading.Thread | None = None
        super().__init__(db, where)

    @classmethod
    def open(cls, name: str, params: dict[str, Any], where: str,
             keep_idle: bool = True, max_idle_s: float = 0.0) -> PostgresStorage:
        # One meshscale per database, checked before the schema is read or migrated.
        lock = DatabaseLock(name, params, where)
        lock.acquire()
        db = pw.PostgresqlDatabase(name, thread_safe=False, prefer_psycopg3=True, **params)
        try:
            return cls(db, params, where, keep_idle, max_idle_s, lock)
        except pw.OperationalError as exc:
            lock.release()
            raise StorageError(f"cannot connect to the {where}: {first_line(exc)}") from None
        except pw.PeeweeException as exc:
            lock.release()
            raise StorageError(f"cannot use the {where}: {first_line(exc)}") from None
        except BaseException:
            lock.release()
            raise

    # -- writing ----------------------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> None:
        with self._lock:
            down_since, error = self._down_since, self._down_error
        if down_since is not None:
            raise StorageError(self._unreachable(error, down_since))
        if self._max_idle_s and time.monotonic() - self._last_used > self._max_idle_s:
            self._drop_connection()  # idle too long: a firewall may have forgotten it
        try:
            try:
                super().apply(ops)
            except StorageError as exc:
                if not self._lost(exc):
                    raise
                log.warning("lost the connection to the %s (%s); reconnecting",
                            self.where, first_line(exc.__cause__ or exc))
                self._drop_connection()
                super().apply(ops)  # once more, on a new connection
                self._check_lock()
        except StorageError as exc:
            if not self._lost(exc):
                raise
            self._drop_connection()
            message = self._went_down(first_line(exc.__cause__ or exc))
            raise StorageError(message) from None
        finally:
            self._last_used = time.monotonic()
            if not self._keep_idle:
                self._drop_connection()

    def _lost(self, exc: StorageError) -> bool:
        """Did the write fail because the connection is gone (not because of the data)?"""
        if not isinstance(exc.__cause__, (pw.OperationalError, pw.InterfaceError)):
            return False
        if self.db.is_closed():
            return True
        conn = self.db.connection()  # type: ignore[no-untyped-call]  # the open one
        return bool(conn.closed) or bool(getattr(conn, "broken", False))

    def _drop_connection(self) -> None:
        conn = None if self.db.is_closed() else self.db.connection()  # type: ignore[no-untyped-call]
        self.db.dispose()  # forgets the connection and any transaction it was in
        if conn is not None:
            try:
                conn.close()
            except Exception:  # it is being thrown away
                log.debug("closing a dead connection failed", exc_info=True)

    def _unreachable(self, error: str, since: float) -> str:
        return (f"cannot persist the change: the {self.where} is unreachable ({error}); nothing "
                "was changed. Try again when it is back (meshscale reconnects by itself; down "
                f"for {time.monotonic() - since:.0f}s)")

    def _went_down(self, error: str) -> str:
        with self._lock:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.error("the %s is unreachable (%s): writes are refused until it is back",
                          self.where, error)
            self._down_error = error
            since = self._down_since
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe, name="meshscale-pg-probe",
                                                daemon=True)
                self._prober.start()
        return self._unreachable(error, since)

    def _probe(self) -> None:
        """Try to connect, with exponential backoff, until the database answers (or close)."""
        delay = BACKOFF_FIRST_S
        while not self._closing.wait(delay):
            try:
                psycopg.connect(dbname=self.db.database, **self._params).close()
            except psycopg.Error as exc:
                with self._lock:
                    self._down_error = first_line(exc)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            self._check_lock()
            with self._lock:
                if self._down_since is not None:
                    log.warning("the %s is reachable again after %.1fs; writes resume",
                                self.where, time.monotonic() - self._down_since)
                self._down_since = None
            return

    def _check_lock(self) -> None:
        if self._db_lock is not None:
            self._db_lock.check()

    @property
    def available(self) -> bool:
        """False while writes are refused because the database cannot be reached."""
        with self._lock:
            return self._down_since is None

    def close(self) -> None:
        self._closing.set()
        if self._prober is not None:
            self._prober.join(timeout=BACKOFF_MAX_S + 1)
        self._drop_connection()
        if self._db_lock is not None:
            self._db_lock.release()
