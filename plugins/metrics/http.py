"""The metrics listener: a tiny ASGI app (``/metrics``, ``/debug/...``) under hypercorn.

It has its own socket, separate from the main listener, so scrapes and debug pages can stay on
loopback (the default, ``127.0.0.1:9090``) while the control plane faces the internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from prometheus_client import CollectorRegistry, make_asgi_app

from meshscale.configvalues import split_host_port
from meshscale.context import ServerContext
from meshscale.plugins.metrics import debug

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_app(server: ServerContext, registry: CollectorRegistry) -> Any:
    prometheus = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/metrics":
            await prometheus(scope, receive, send)
            return
        body, status, ctype = b"not found\n", 404, b"text/plain"
        if path in ("/debug", "/debug/") or path.startswith("/debug/"):
            refusal = _debug_refusal(server.config.metrics_debug_token, scope)
            if refusal is not None:
                status, body = refusal
            else:
                page = debug.render(server, path.removeprefix("/debug").strip("/"))
                if page is not None:
                    body, status, ctype = page, 200, b"application/json"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def _debug_refusal(token: str, scope: Scope) -> tuple[int, bytes] | None:
    """None if the request may see /debug/ pages, else (status, one-line reason)."""
    if not token:
        return 403, b"debug pages are off; set metrics_debug_token to turn them on\n"
    given = b""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
            given = value[7:].strip()
    # Compare digests, in constant time: neither the length nor a prefix of the token leaks.
    want = hashlib.sha256(token.encode()).digest()
    if not hmac.compare_digest(hashlib.sha256(given).digest(), want):
        return 401, b"debug pages need the header: Authorization: Bearer <metrics_debug_token>\n"
    return None


class Listener:
    """Serves ``app`` on ``addr`` until ``stop``; ``port`` is the bound port (``:0`` picks one)."""

    def __init__(self) -> None:
        self.port = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: Any, addr: str) -> None:
        host, port = split_host_port(addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bind here rather than in hypercorn: the address error surfaces at start-up, with the
        # config key in it, and we learn the port when the config asked for port 0.
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        cfg = HypercornConfig()
        cfg.bind = [f"fd://{sock.detach()}"]
        cfg.errorlog = log
        cfg.graceful_timeout = 1.0
        self._task = asyncio.get_running_loop().create_task(
            serve(app, cfg, shutdown_trigger=self._stop.wait, mode="asgi"),
            name="metrics-listener",
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except TimeoutError:
                log.warning("metrics listener did not stop in time; cancelled")
            except Exception:
                log.exception("metrics listener failed")
            with contextlib.suppress(asyncio.CancelledError):
                if not self._task.done():
                    self._task.cancel()
                    await self._task
