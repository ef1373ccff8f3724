"""API keys on the private admin socket (``/v1/apikeys``): what ``meshscale apikeys`` calls."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from quart import Quart, Response, request

from meshscale import auth, tailcfg
from meshscale.errors import MeshscaleError
from meshscale.state.apikeys import ApiKeys
from meshscale.state.models import ApiKey


def apikey_view(k: ApiKey) -> dict[str, Any]:
    """headscale's ApiKey message (its JSON names), the prefix masked as headscale 0.29 lists it;
    never the secret or its hash."""
    return {
        "id": k.id,
        "prefix": auth.masked_key(k.key_form, k.prefix),
        "expiration": tailcfg.gotime(k.expiration) if k.expiration else None,
        "createdAt": tailcfg.gotime(k.created_at),
        "lastSeen": tailcfg.gotime(k.last_seen) if k.last_seen else None,
    }


def _json(data: Any) -> Response:
    return Response(json.dumps(data), status=200, content_type="application/json")


def expiration_of(seconds: object) -> timedelta | None:
    """The lifetime a request asks for, in seconds; 0 means never."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise MeshscaleError("expiration must be a non-negative number of seconds (0 = never)")
    return timedelta(seconds=seconds) if seconds else None


def add_routes(app: Quart, keys: Callable[[], ApiKeys]) -> None:
    async def body() -> dict[str, Any]:
        data = await request.get_json(force=True, silent=True)
        return data if isinstance(data, dict) else {}

    @app.get("/v1/apikeys")
    async def list_apikeys() -> Response:
        return _json([apikey_view(k) for _, k in sorted(keys().keys.items())])

    @app.post("/v1/apikeys")
    async def create_apikey() -> Response:
        b = await body()
        key, full = keys().create(expiration_of(b.get("expiration", 90 * 86400)))
        return _json({**apikey_view(key), "key": full})

    @app.post("/v1/apikeys/expire")
    async def expire_apikey() -> Response:
        return _json(apikey_view(keys().expire(str((await body()).get("prefix", "")))))

    @app.post("/v1/apikeys/delete")
    async def delete_apikey() -> Response:
        return _json(apikey_view(keys().delete(str((await body()).get("prefix", "")))))
