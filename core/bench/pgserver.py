"""A throw-away PostgreSQL server for benchmarks and tests: private data directory, private
unix socket, one 127.0.0.1 port; never the machine's own cluster.

Needs the server binaries (Debian's ``postgresql`` package; ``scripts/ensure-postgres``
installs it). initdb and postgres refuse to run as root, and a test namespace (``unshare -rn``)
maps only root; so as root they run in a user namespace of their own where they are an ordinary
user (the ``postgres`` account's ids, or nobody's) while their files stay ours on disk.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from meshscale.errors import MeshscaleError
from meshscale.ports import free_port

SUPERUSER = "postgres"


def find_bindir() -> str:
    env = os.environ.get("MESHSCALE_PG_BIN")
    candidates = [env] if env else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                         else 0, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for c in candidates:
        if c and os.access(Path(c) / "initdb", os.X_OK) and os.access(Path(c) / "postgres",
                                                                       os.X_OK):
            return c
    raise MeshscaleError("PostgreSQL server binaries not found: run scripts/ensure-postgres "
                         "(or set MESHSCALE_PG_BIN to the directory holding initdb and postgres)")


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam("postgres")
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = 65534
    return ["unshare", "--user", f"--map-user={uid}", f"--map-group={gid}", "--"]


class PgServer:
    """``start()`` once (initdb), ``stop()``/``start()`` again at will, ``close()`` removes all."""

    def __init__(self, durable: bool = False) -> None:
        self.bindir = find_bindir()
        self.base = Path(tempfile.mkdtemp(prefix="meshscale-pg-"))
        self.data = self.base / "data"
        self.socket_dir = str(self.base / "sock")
        os.mkdir(self.socket_dir)
        self.port = free_port()
        # Tests want speed: without fsync a power cut could lose data, a killed server cannot
        # (the OS has its writes); synchronous_commit stays on for that reason. A benchmark of
        # a real deployment wants fsync (durable=True).
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def params(self, tcp: bool = False) -> dict[str, Any]:
        """psycopg connection parameters (no dbname): the unix socket, or 127.0.0.1."""
        host = "127.0.0.1" if tcp else self.socket_dir
        return {"host": host, "port": self.port, "user": SUPERUSER}

    def start(self, timeout: float = 30.0) -> None:
        if not self.data.exists():
            subprocess.run(  # noqa: S603 - PostgreSQL's own binaries, our arguments
                [*_unprivileged(), f"{self.bindir}/initdb", "-D", str(self.data), "-U", SUPERUSER,
                 "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                check=True, cwd=self.base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while it runs
        self.proc = subprocess.Popen(  # noqa: S603 - as above
            [*_unprivileged(), f"{self.bindir}/postgres", "-D", str(self.data),
             "-p", str(self.port), "-k", self.socket_dir, *settings],
            cwd=self.base, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg  # noqa: PLC0415

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(dbname="postgres", connect_timeout=2, **self.params()).close()
                return
            except psycopg.OperationalError:
                assert self.proc is not None
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    last = self.log_path.read_text(errors="replace").strip().splitlines()
                    raise MeshscaleError(
                        f"PostgreSQL did not start ({last[-1] if last else 'no output'}); "
                        f"its log: {self.log_path}") from None
                time.sleep(0.05)

    def stop(self, immediate: bool = False) -> None:
        """Fast shutdown (SIGINT), or immediate (SIGQUIT: no checkpoint, like a crash; the next
        start recovers from the WAL)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def create_database(self, name: str) -> None:
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        with psycopg.connect(dbname="postgres", autocommit=True, **self.params()) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
