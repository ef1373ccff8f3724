"""Files the server creates are private to its user, whatever the directory they land in.

The mode is given at creation (``os.open`` with 0600, ``mkdir`` with 0700) rather than fixed
afterwards, so there is no moment at which another local user could open the file; a directory
that already exists with 0755 does not make its new files readable by others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700; an existing directory is left as it is."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists and only its owner can read it (for files others open, such
    as SQLite's database, whose journal and WAL files then get the same mode)."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    tighten(path)


def tighten(path: Path) -> None:
    """An existing file of ours readable by others (made by an older version): make it 0600."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
        log.warning("%s was readable by other users; it is now private to its owner", path)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a stale one may have another mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
