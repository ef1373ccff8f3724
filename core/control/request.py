"""One control request as handlers see it, and how they answer it (over HTTP/2 in Noise)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ControlRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    machine_key: bytes  # from the Noise handshake: the only identity we trust
    capver: int  # from the Noise initiation header
    stream_id: int = 0



class Connection(Protocol):
    """What a ResponseWriter needs of its connection (control.h2conn.NoiseH2Connection)."""

    on_success: Callable[[], None] | None

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]],
                     end: bool) -> None: ...
    async def send_data(self, stream_id: int, data: bytes | Sequence[bytes]) -> None: ...
    def direct_writer(self, stream_id: int) -> Callable[[bytes], bool] | None: ...
    def end_stream(self, stream_id: int) -> None: ...
    def abort(self) -> None: ...
    def stream_open(self, stream_id: int) -> bool: ...


class ResponseWriter:
    """What a handler uses to answer one request."""

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.started = False
        self.finished = False

    async def start(self, status: int, content_type: str = "") -> None:
        if 200 <= status < 300 and self._conn.on_success is not None:
            self._conn.on_success()
        headers = [(":status", str(status))]
        if content_type:
            headers.append(("content-type", content_type))
        self._conn.send_headers(self.stream_id, headers, end=False)
        self.started = True

    async def write(self, data: bytes | Sequence[bytes]) -> None:
        """Send ``data``: one buffer, or parts sent as their concatenation."""
        await self._conn.send_data(self.stream_id, data)

    def direct_writer(self) -> Callable[[bytes], bool] | None:
        """A function that writes without waiting if the connection can take the bytes at once
        (False: not written); made once per stream. None: the stream is not open."""
        return self._conn.direct_writer(self.stream_id)

    async def end(self) -> None:
        if not self.finished:
            self._conn.end_stream(self.stream_id)
            self.finished = True

    def abort(self) -> None:
        """Drop the whole connection now, with whatever it has not sent (a client too slow)."""
        self.finished = True
        self._conn.abort()

    async def send(self, status: int, body: bytes = b"", content_type: str = "") -> None:
        await self.start(status, content_type)
        if body:
            await self.write(body)
        await self.end()

    @property
    def closed(self) -> bool:
        return not self._conn.stream_open(self.stream_id)


Handler = Callable[[ControlRequest, ResponseWriter], Awaitable[None]]


async def serve(handler: Handler, req: ControlRequest, resp: ResponseWriter) -> None:
    """Answer one request with ``handler``, then end its stream: the one home of this for a
    connection served here (h2conn.py) and one a worker serves (workers/remote.py).

    A reset stream just ends; a handler's failure is logged and, if nothing was sent yet,
    answered 500, or 400 for input nested deeper than Python recurses (the client's fault)."""
    sid = req.stream_id
    try:
        await handler(req, resp)
        await resp.end()
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        pass
    except RecursionError:
        log.info("control request on stream %d refused: nested too deeply", sid)
        if not resp.started and not resp.closed:
            with contextlib.suppress(Exception):
                await resp.send(400, b"request nested too deeply\n", "text/plain")
    except Exception:
        log.exception("control request on stream %d failed", sid)
        if not resp.started and not resp.closed:
            with contextlib.suppress(Exception):
                await resp.send(500, b"internal error\n", "text/plain")
