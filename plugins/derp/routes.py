"""Quart views for the main listener: probes, captive-portal check, ``/verify``, a 426 for
``/derp`` without an upgrade. The answers themselves come from the sans-IO ``http`` module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quart import Response, request

from meshscale.contributions import HttpRoute
from meshscale.plugins.derp import http
from meshscale.plugins.derp.service import DerpService

MAX_VERIFY_BODY = 16 << 10

View = Callable[[], Awaitable[Response]]


def _response(reply: http.Reply) -> Response:
    return Response(reply.body, status=reply.status, headers=dict(reply.headers))


def routes(service: DerpService, *, embedded: bool) -> list[HttpRoute]:
    """``/verify`` always (external derpers use it); the rest only with the embedded DERP."""

    async def verify() -> Response:
        if (request.content_length or 0) > MAX_VERIFY_BODY:
            return _response(http.Reply(413))
        body = await request.get_data(as_text=False)
        if isinstance(body, str):  # pragma: no cover - as_text=False gives bytes
            body = body.encode()
        if len(body) > MAX_VERIFY_BODY:
            return _response(http.Reply(413))
        known = service.node_key_known if service.server is not None else None
        return _response(http.verify(body, known))

    async def probe() -> Response:
        return _response(http.probe())

    async def generate_204() -> Response:
        return _response(http.generate_204(request.headers.get("X-Tailscale-Challenge")))

    async def derp_without_upgrade() -> Response:
        return _response(http.upgrade_required())

    out = [HttpRoute("/verify", verify, ("POST",), "derp_verify")]
    if embedded:
        out += [
            HttpRoute("/derp", derp_without_upgrade, ("GET", "POST"), "derp_no_upgrade"),
            HttpRoute("/derp/probe", probe, ("GET", "HEAD"), "derp_probe"),
            HttpRoute("/derp/latency-check", probe, ("GET", "HEAD"), "derp_latency_check"),
            HttpRoute("/generate_204", generate_204, ("GET", "HEAD"), "derp_generate_204"),
        ]
    return out
