"""The plain-HTTP app on the main listener (Quart): /key, /health and plugins' routes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from quart import Quart, Response, request

from meshscale.contributions import HttpRoute

ZERO_MKEY = "mkey:" + "0" * 64


def create_app(noise_public: bytes, routes: Sequence[HttpRoute] = (),
               problem: Callable[[], str | None] = lambda: None) -> Quart:
    """``problem`` says why the server cannot do its job right now (None: it can)."""
    app = Quart("meshscale")
    public = "mkey:" + noise_public.hex()

    @app.get("/key")
    async def key() -> Response:
        # Without ?v= old clients expect the legacy bare-hex key; modern ones send v.
        if request.args.get("v") is None:
            return Response("0" * 64, content_type="text/plain")
        return Response(
            f'{{"legacyPublicKey":"{ZERO_MKEY}","publicKey":"{public}"}}',
            content_type="application/json",
        )

    @app.get("/health")
    async def health() -> Response:
        # Load balancers and orchestrators read this: a server that cannot store registrations
        # answers 503 with the reason, as headscale's /health does when its database is away.
        reason = problem()
        if reason is not None:
            return Response(json.dumps({"status": "fail", "reason": reason}), status=503,
                            content_type="application/json")
        return Response('{"status":"pass"}', content_type="application/json")

    @app.get("/")
    async def index() -> Response:
        return Response("meshscale: a Tailscale control server\n", content_type="text/plain")

    for i, route in enumerate(routes):
        app.add_url_rule(
            route.path,
            endpoint=route.name or f"plugin_route_{i}",
            view_func=route.view,
            methods=list(route.methods),
        )
    return app
