"""``/api/v1/dns`` (routed by meshscale.api.rest.ROUTES): the operations of
meshscale.api.dnsapi with /api/v1's calling convention. A meshscale extension (docs/api.md)."""

from __future__ import annotations

from typing import Any

from meshscale.api import dnsapi
from meshscale.api.resttypes import Call


async def get_dns(c: Call) -> dict[str, Any]:
    return dnsapi.show(dnsapi.running(c.server.dns))


async def set_dns(c: Call) -> dict[str, Any]:
    return dnsapi.put(dnsapi.running(c.server.dns), c.body)


async def reset_dns(c: Call) -> dict[str, Any]:
    return dnsapi.delete(dnsapi.running(c.server.dns))
