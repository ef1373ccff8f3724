"""One server per data directory: an exclusive lock on ``meshscale.lock`` inside it.

The lock is ``flock`` on an open file, so the kernel releases it when the holder dies, however
it dies: a crashed server never leaves a stale lock behind. The file holds the holder's pid
while it runs (for the refusal message) and is emptied, not removed, when it stops: removing
it would let a third server lock a fresh inode while a second still waits on the old one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from meshscale.errors import MeshscaleError

LOCK_NAME = "meshscale.lock"


class DataDirError(MeshscaleError):
    """The data directory cannot be used: missing and not creatable, read-only, or in use."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def ensure_data_dir(path: Path) -> None:
    """Create the data directory (0700) if missing; a one-line error if that is impossible."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataDirError(
            f"refusing to start: cannot create the data directory {path}: {_reason(exc)}; "
            "create it, or set data_dir to a directory this user may write"
        ) from None
    if not path.is_dir():
        raise DataDirError(f"refusing to start: data_dir {path} is not a directory")


class DataDirLock:
    """Held by the running server from start to stop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        try:
            # No O_TRUNC: the pid of a running holder must survive a refused second server.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DataDirError(
                f"refusing to start: the data directory {self.data_dir} is not writable "
                f"({_reason(exc)}); fix its permissions or set data_dir to a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirError(
                    f"refusing to start: cannot lock {self.path}: {_reason(exc)}"
                ) from None
            who = f"pid {holder}" if holder else "another process"
            raise DataDirError(
                f"refusing to start: the data directory {self.data_dir} is in use by another "
                f"meshscale server ({who}); stop it first, or give this one its own data_dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise DataDirError(
                f"refusing to start: the data directory {self.data_dir} is not writable "
                f"({_reason(exc)}); fix its permissions or set data_dir to a writable directory"
            ) from None
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid: nobody runs here any more
        os.close(fd)  # closing drops the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
