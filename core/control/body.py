"""A control request's JSON body, or why it is refused (the same words for every endpoint)."""

from __future__ import annotations

import json
from typing import Any

from meshscale.control.request import ControlRequest


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
