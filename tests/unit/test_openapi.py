"""The OpenAPI document of /api/v1: valid (openapi-spec-validator), made from the route table
the server routes by, and shipped as docs/openapi.json exactly as generated."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from meshscale.api.openapi import document
from meshscale.api.rest import ROUTES

SHIPPED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_the_document_is_valid_openapi() -> None:
    validate(document())  # raises on an invalid document


def test_the_document_has_every_route_and_nothing_else() -> None:
    paths = document()["paths"]
    described = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert described == {(r.method, r.path) for r in ROUTES}
    assert len({r.operation_id for r in ROUTES}) == len(ROUTES)


def test_the_shipped_copy_equals_the_generated_one() -> None:
    assert json.loads(SHIPPED.read_text()) == document(), (
        "docs/openapi.json is stale: python -m meshscale.api.openapi > docs/openapi.json")
