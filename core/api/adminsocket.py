"""The admin API's unix socket file: claimed at start, given back at stop.

A file left by a server that died is replaced; a file that is no socket, or a socket another
running server answers on (its path may lie outside our data directory), refuses the start.
At stop the file is removed only if it is still the one this server made (same device and
inode), never the socket of a server started later on the same path. The admin app itself is
``admin.py``; this module knows only the file and the FrontDoor that serves the app on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale import files
from meshscale.errors import MeshscaleError
from meshscale.transport import FrontDoor


class AdminSocket:
    """The socket file at ``path`` (mode ``permission``, octal) for one server's lifetime."""

    def __init__(self, path: Path, permission: str) -> None:
        self.path = path
        self._permission = permission
        self._inode: tuple[int, int] | None = None  # the socket file this server made

    def is_stale(self) -> bool:
        """False if there is no socket file; refuses a file that is no socket, or a socket
        another server answers on (its path may lie outside our data directory)."""
        path = self.path
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(mode):
            raise MeshscaleError(f"refusing to start: unix_socket {path} exists and is not "
                                 "a socket; remove it or set unix_socket to another path")
        if _socket_answers(path):
            raise MeshscaleError(
                f"refusing to start: the admin socket {path} belongs to another running "
                "server; stop it, or set unix_socket to another path")
        return True

    async def serve(self, app: object) -> asyncio.Server:
        """Serve the admin ``app`` on the socket file; a dead server's file is replaced."""
        path = self.path
        files.private_dir(path.parent)
        if self.is_stale():
            path.unlink()  # left behind by a server that died: nobody answers on it
        front = FrontDoor(X25519PrivateKey.generate(), _no_control, app)
        admin = await asyncio.start_unix_server(front, str(path))
        st = path.stat()
        self._inode = (st.st_dev, st.st_ino)
        os.chmod(path, int(self._permission, 8))
        return admin

    def remove(self) -> None:
        """Unlink the admin socket only if it is still the one this server made: never the
        socket of another server (one started later on the same path, or a refused start)."""
        if self._inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        self._inode = None


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


async def _no_control(req: Any, resp: Any) -> None:
    await resp.send(404, b"not a control endpoint\n", "text/plain")
