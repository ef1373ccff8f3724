"""The plain-HTTP port next to HTTPS: answers ACME HTTP-01 challenges, redirects the rest.

The redirect goes to ``server_url`` (never to the request's Host header, which a stranger
chooses) with the request's path and query. Each connection serves one request and closes; a
bounded number are open at once and each has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

from meshscale.httphead import read_head

log = logging.getLogger(__name__)

ACME_PREFIX = "/.well-known/acme-challenge/"
MAX_CONNECTIONS = 256
DEADLINE = 10.0


class RedirectPort:
    def __init__(self, server_url: str, http01: Mapping[str, bytes]) -> None:
        parts = urlsplit(server_url)
        self.base = f"https://{parts.netloc}"
        self.http01 = http01  # shared with MainTls: challenges appear here as ACME adds them
        self._open = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            await asyncio.wait_for(self._serve(reader, writer), DEADLINE)
        except (ConnectionError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if head is None:
            return
        writer.write(self.response(head.method, head.target))
        await writer.drain()

    def response(self, method: str, target: str) -> bytes:
        """The whole response for one request (sans-IO, so tests check the bytes)."""
        path = target.split("?", 1)[0]
        if path.startswith(ACME_PREFIX):
            body = self.http01.get(path)
            if body is None:
                return _response(404, "Not Found", [], b"no such challenge\n")
            log.info("acme: answered the HTTP-01 challenge %s", path)
            return _response(200, "OK", [("Content-Type", "application/octet-stream")], body)
        if not target.startswith("/"):
            target = "/"
        location = self.base + target
        # 308 keeps the method (a POST stays a POST); browsers follow it like 301.
        body = f"HTTPS only: {location}\n".encode()
        if method == "HEAD":
            return _response(308, "Permanent Redirect", [("Location", location)], b"",
                             length=len(body))
        return _response(308, "Permanent Redirect", [("Location", location)], body)


def _response(status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
              length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {len(body) if length is None else length}", "Connection: close"]
    if not any(k == "Content-Type" for k, _ in headers):
        lines.append("Content-Type: text/plain; charset=utf-8")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
