"""The embedded DERP's own TLS port: a tiny HTTP/1.1 server (h11) in front of the relay.

Only what a DERP client needs is served here: ``/derp`` (Upgrade: DERP or WebSocket), the
probes and ``/generate_204``. One request per connection: the DERP upgrade keeps the socket,
anything else is answered and closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol

import h11

from meshscale.plugins.derp import http

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0
MAX_HEAD = 16 << 10

class UpgradeServer(Protocol):
    """Serves an accepted ``/derp`` upgrade (kind "derp" or "websocket") on this socket."""

    def __call__(
        self,
        kind: str,
        headers: Sequence[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: tuple[str, int],
        prefix: bytes,  # bytes read past the request head
    ) -> Awaitable[None]: ...


async def handle_client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, serve_upgrade: UpgradeServer
) -> None:
    peername = writer.get_extra_info("peername")
    peer = (str(peername[0]), int(peername[1])) if isinstance(peername, tuple) else ("", 0)
    handed_over = False
    try:
        parsed = await _read_head(reader)
        if parsed is None:
            return
        if isinstance(parsed, http.Reply):
            writer.write(http.render(parsed))
            await writer.drain()
            return
        method, target, headers, rest = parsed
        path = target.split("?", 1)[0]
        if path == "/derp":
            kind = http.upgrade_kind(headers)
            if kind is None:
                writer.write(http.render(http.upgrade_required()))
                await writer.drain()
                return
            handed_over = True
            await serve_upgrade(kind, headers, reader, writer, peer=peer, prefix=rest)
            return
        reply = _plain(method, path, headers)
        writer.write(http.render(reply, head_only=method == "HEAD"))
        await writer.drain()
    except (ConnectionError, OSError) as exc:
        log.debug("derp tls: %s: %s", peer, exc)
    finally:
        if not handed_over:
            writer.close()


def _plain(method: str, path: str, headers: Sequence[tuple[str, str]]) -> http.Reply:
    if path in http.PROBE_PATHS:
        return http.probe() if method in ("GET", "HEAD") else http.Reply(405)
    if path == "/generate_204":
        return http.generate_204(http.header(headers, "x-tailscale-challenge"))
    return http.Reply(404, [("Content-Type", "text/plain")], b"not found")


async def _read_head(
    reader: asyncio.StreamReader,
) -> tuple[str, str, list[tuple[str, str]], bytes] | http.Reply | None:
    """(method, target, headers, bytes after the head), a Reply for a bad request, or None."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    request: h11.Request | None = None
    try:
        async with asyncio.timeout(HEAD_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    continue
                if isinstance(event, h11.Data):
                    continue  # a body on a GET: ignore it
                if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    break
                return None  # ConnectionClosed before a whole request
    except h11.RemoteProtocolError as exc:
        return http.Reply(400, [("Content-Type", "text/plain")], str(exc).encode()[:200])
    except TimeoutError:
        return None
    if request is None:
        return None
    data, _closed = conn.trailing_data
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers]
    return request.method.decode("ascii"), request.target.decode("latin-1"), headers, bytes(data)
