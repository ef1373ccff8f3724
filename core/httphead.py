"""One HTTP/1.1 request head, read with h11 from a stream, and the plain-text answers to it.

What every plain listener reads first: the front door (``transport.py``) routes on it, the
plain-HTTP redirect port (``tls/redirect.py``) answers it, and a connection worker refuses with
``plain_response`` as the front door does. Kept apart from the front door so that those need not
import it (and hypercorn with it).
"""

from __future__ import annotations

import asyncio

import h11

MAX_HEAD = 16 * 1024


class Head:
    """The parsed request head and the bytes that came with it."""

    def __init__(self, request: h11.Request, raw: bytes, rest: bytes) -> None:
        self.method = request.method.decode("ascii", "replace")
        self.target = request.target.decode("ascii", "replace")
        self.path = self.target.split("?", 1)[0]
        self.version = request.http_version.decode("ascii", "replace")
        self.headers = [
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers
        ]
        self.raw = raw  # everything read so far (head + rest)
        self.rest = rest  # bytes after the head

    def header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v
        return ""


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """Read one request head. None: the peer went away; ValueError: not HTTP/1.1.

    The caller bounds the whole read with a deadline (not each read)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ValueError(f"malformed HTTP request: {exc}") from None
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data:
                return None
            raw += data
            conn.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            crlf = raw.find(b"\r\n\r\n")
            end = crlf + 4 if crlf >= 0 else raw.find(b"\n\n") + 2
            return Head(event, bytes(raw), bytes(raw[end:]))
        raise ValueError("unexpected HTTP event before a request")


def plain_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
