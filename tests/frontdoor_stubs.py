"""The two handlers a FrontDoor needs, for tests that exercise only its own part: an ASGI app
that answers 404 to everything, and a control handler that does the same."""

from __future__ import annotations

from typing import Any


async def not_found_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def no_control(req: Any, resp: Any) -> None:
    await resp.send(404, b"", "text/plain")
