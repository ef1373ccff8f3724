"""The OpenAPI 3.0 document of /api/v1, made from ``meshscale.api.rest.ROUTES`` (the table the
server routes by), so it describes exactly what answers. docs/openapi.json is a copy of it
(tests/unit/test_openapi.py keeps the copy equal); regenerate with
``python -m meshscale.api.openapi > docs/openapi.json``."""

from __future__ import annotations

import json
from typing import Any

from quart import Response

from meshscale import __version__
from meshscale.api.rest import ROUTES
from meshscale.contributions import HttpRoute

_ERROR = {"type": "object", "properties": {
    "code": {"type": "integer"}, "message": {"type": "string"},
    "details": {"type": "array", "items": {"type": "object"}}}}


def _schema(kind: str) -> dict[str, Any]:
    if kind == "uint64":
        return {"type": "string", "format": "uint64"}
    if kind == "date-time":
        return {"type": "string", "format": "date-time"}
    if kind == "array":
        return {"type": "array", "items": {"type": "string"}}
    return {"type": kind}


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True,
             "schema": _schema(r.path_types.get(p, "string"))} for p in r.params]
        params += [{"name": name, "in": "query", "required": False, "schema": _schema(kind)}
                   for name, kind in r.query]
        op: dict[str, Any] = {
            "operationId": r.operation_id,
            "summary": r.summary,
            "tags": [r.tag],
            "responses": {
                "200": {"description": "headscale's response message",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": {"description": "an error",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Status"}}}},
            },
        }
        if params:
            op["parameters"] = params
        if r.body:
            op["requestBody"] = {"required": False, "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    name: _schema(kind) for name, kind in r.body}}}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "meshscale API (headscale v0.29.2 compatible)",
                 "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Status": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def openapi_routes() -> list[HttpRoute]:
    """The document on the main listener (no key needed: it holds no data), at our path and
    at headscale's."""

    async def serve() -> Response:
        return Response(json.dumps(document(), indent=2), content_type="application/json")

    return [HttpRoute("/api/v1/openapi.json", serve, ("GET",), name="api:openapi"),
            HttpRoute("/swagger/v1/openapiv2.json", serve, ("GET",), name="api:swagger")]


def main() -> None:
    print(json.dumps(document(), indent=2))


if __name__ == "__main__":
    main()
