"""The admin API for remote CLIs: every route of the unix socket's admin API (meshscale.api.admin)
also on the main listener under ``/api/meshscale``, behind an API key.

Why not headscale's ``/api/v1`` for the remote CLI: the CLI prints the admin API's answers, and
several of them carry what ``/api/v1``'s messages lack (a node's ``ephemeral``, the object a
delete or expire acted on, the waiting login a reject refused, the policy mode, the server's
figures). Translating would make remote output differ from local output, or cost extra round
trips that are not atomic. Serving the same views makes the output identical by construction,
as headscale's CLI gets the same gRPC API on its socket and over the network.

The views are the socket's own; here they gain what a network listener needs: the API key
(``Authorization: Bearer``, the same check as /api/v1, so a bad or expired key gets 401 and
nothing else), a body size limit, and the admin API's error answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from quart import Response, request

from meshscale.api.admin import admin_error, create_admin_app
from meshscale.api.rest import MAX_BODY, authenticated
from meshscale.contributions import HttpRoute
from meshscale.errors import MeshscaleError

if TYPE_CHECKING:
    from meshscale.api.resttypes import RestServer

PREFIX = "/api/meshscale"

View = Callable[..., Awaitable[Any]]


def _refuse(message: str, status: int) -> Response:
    return Response(json.dumps({"error": message}), status=status,
                    content_type="application/json")


async def _bounded_body() -> Response | None:
    """Read the body with the limit, then put it back for the view (which reads it itself)."""
    if (request.content_length or 0) > MAX_BODY:
        return _refuse(f"request body over {MAX_BODY} bytes", 413)
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
        if len(raw) > MAX_BODY:
            return _refuse(f"request body over {MAX_BODY} bytes", 413)
    body = request.body_class(len(raw), None)
    body.set_result(bytes(raw))
    request.body = body
    return None


def _guarded(server: RestServer, view: View) -> View:
    async def guarded(**params: str) -> Any:
        if not authenticated(server):
            return _refuse("invalid or expired API key", 401)
        refused = await _bounded_body()
        if refused is not None:
            return refused
        try:
            return await view(**params)
        except MeshscaleError as exc:
            return admin_error(exc)

    return guarded


def remote_admin_routes(server: RestServer) -> list[HttpRoute]:
    """The admin API's routes under PREFIX, for the main listener."""
    app = create_admin_app(server)
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue  # Quart's own (static files)
        methods = tuple(sorted(m for m in rule.methods or () if m not in ("HEAD", "OPTIONS")))
        view = cast(View, app.view_functions[rule.endpoint])  # the admin API's: all async
        out.append(HttpRoute(PREFIX + rule.rule, _guarded(server, view), methods,
                             name="admin:" + rule.endpoint))
    return out
