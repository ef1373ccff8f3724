"""The main listening socket's accept loop.

asyncio's own accept loop, when the process runs out of file descriptors, reports EMFILE to the
loop's exception handler once per queued connection (up to the backlog, 4,096 here) and schedules
as many retries: about a million logged tracebacks in two minutes under a connection flood. This
loop reports the condition to its owner (which logs a summary and makes room) and waits a little
before accepting again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
RETRY_DELAY = 0.1  # seconds between accept() attempts while descriptors are exhausted

Accepted = Callable[[socket.socket, str], None]


class Listener:
    def __init__(self, sock: socket.socket, accepted: Accepted,
                 exhausted: Callable[[OSError], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.accepted = accepted
        self.exhausted = exhausted
        self.port: int = sock.getsockname()[1]
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def bind(cls, host: str, port: int, accepted: Accepted,
             exhausted: Callable[[OSError], None], backlog: int = 4096) -> Listener:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return cls(sock, accepted, exhausted)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="accept")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self.exhausted(exc)
                    await asyncio.sleep(RETRY_DELAY)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue  # the client gave up before we accepted: nothing to do
                if self.sock.fileno() < 0:
                    return  # closed under us: stopping
                log.warning("accept() failed: %s; retrying", exc)
                await asyncio.sleep(RETRY_DELAY)
                continue
            ip = str(addr[0]) if isinstance(addr, tuple) else ""
            try:
                self.accepted(conn, ip)
            except Exception:
                log.exception("could not start serving a connection from %s", ip)
                conn.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()
