"""Delivery: one bounded queue and one task per URL; the server's hooks only enqueue.

Order: a URL's task sends one event at a time, in the order the server emitted them, and retries
an event before moving on, so every receiver sees each node's events in order.

Drop policy: when a URL's queue is full (the receiver is down or slower than the event rate), the
*new* event is dropped and counted (``webhooks_dropped_total``); what is queued stays, in order.
A receiver that is down therefore loses the newest events, never the server's time.

Events still queued when the server stops are dropped (its tasks are cancelled at shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

from meshscale_webhooks.payload import SIGNATURE_HEADER, Envelope, sign
from meshscale_webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
# Worth retrying: the receiver may recover. Any other 4xx is the receiver saying "never".
RETRY_STATUSES = frozenset({408, 425, 429})

Post = Callable[[str, bytes, Mapping[str, str], float], Awaitable[int]]


async def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST ``body`` and return the response status. One connection per event, then closed."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if https else None)
        try:
            writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
    fields = status_line.split()
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise ValueError(f"not an HTTP response: {status_line[:60]!r}")
    return int(fields[1])


class Deliverer:
    """The queue and delivery loop of one URL."""

    def __init__(self, url: str, settings: WebhookSettings, send: Post = post) -> None:
        self.url = url
        self.settings = settings
        self.queue: asyncio.Queue[Envelope] = asyncio.Queue(settings.queue_size)
        self._send = send
        self.delivered = 0
        self.failed = 0  # given up after max_attempts (or refused with a 4xx)
        self.dropped = 0  # never queued: the queue was full

    def offer(self, envelope: Envelope) -> None:
        """Called from a hook: never waits."""
        try:
            self.queue.put_nowait(envelope)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("webhook %s: queue full (%d); dropped %d new event(s) so far",
                            self.url, self.settings.queue_size, self.dropped)

    async def run(self) -> None:
        while True:
            envelope = await self.queue.get()
            await self._deliver(envelope)
            self.queue.task_done()

    async def _deliver(self, envelope: Envelope) -> None:
        body = envelope.body()
        headers = {SIGNATURE_HEADER: sign(self.settings.secret, body),
                   "X-Meshscale-Event": envelope.type, "X-Meshscale-Delivery": envelope.id,
                   "User-Agent": "meshscale-webhooks"}
        reason = ""
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                status = await self._send(self.url, body, headers, self.settings.timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                reason = f"HTTP {status}"
                if status < 500 and status not in RETRY_STATUSES:
                    break
            if attempt < self.settings.max_attempts:
                await asyncio.sleep(min(self.settings.backoff * 2 ** (attempt - 1), MAX_BACKOFF))
        self.failed += 1
        log.warning("webhook %s: gave up on %s %s after %d attempt(s): %s",
                    self.url, envelope.type, envelope.id, attempt, reason)
