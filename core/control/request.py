"""One control request as handlers see it, and how they answer it (over HTTP/2 in Noise)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshscale.control.h2conn import NoiseH2Connection


@dataclass(slots=True)
class ControlRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    machine_key: bytes  # from the Noise handshake: the only identity we trust
    capver: int  # from the Noise initiation header
    stream_id: int = 0



class ResponseWriter:
    """What a handler uses to answer one request."""

    def __init__(self, conn: NoiseH2Connection, stream_id: int) -> None:
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

    async def write(self, data: bytes) -> None:
        await self._conn.send_data(self.stream_id, data)

    async def end(self) -> None:
        if not self.finished:
            self._conn.end_stream(self.stream_id)
            self.finished = True

    async def send(self, status: int, body: bytes = b"", content_type: str = "") -> None:
        await self.start(status, content_type)
        if body:
            await self.write(body)
        await self.end()

    @property
    def closed(self) -> bool:
        return self._conn.closed or self.stream_id not in self._conn.streams


Handler = Callable[[ControlRequest, ResponseWriter], Awaitable[None]]
