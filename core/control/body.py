"""A control request's JSON body, or why it is refused (the same words for every endpoint)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from meshscale.clientinput import BadRequest, Limits
from meshscale.control.request import ControlRequest, ResponseWriter

T = TypeVar("T")


def json_body(req: ControlRequest) -> dict[str, Any] | str:
    """The body as a JSON object, or the one-line reason it is not one (an HTTP 400)."""
    if req.method != "POST":
        return f"{req.method} not allowed; use POST"
    try:
        body = json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"invalid JSON: {exc}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    if not isinstance(body, dict):
        return "invalid JSON: expected an object"
    return body


async def typed_body(req: ControlRequest, resp: ResponseWriter,
                     parse: Callable[[dict[str, Any], Limits], T], limits: Limits) -> T | None:
    """The body parsed by ``parse`` (register or map), or None once a 400 saying why was sent."""
    body = json_body(req)
    if isinstance(body, str):
        await resp.send(400, body.encode() + b"\n", "text/plain")
        return None
    try:
        return parse(body, limits)
    except BadRequest as exc:
        await resp.send(400, f"{exc}\n".encode(), "text/plain")
        return None
