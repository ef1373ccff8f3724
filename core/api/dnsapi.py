"""DNS settings through the admin API: a meshscale extension (headscale has none; its issues
#173 and #1356 asked for it).

``GET`` shows the settings in force and where they come from; ``PUT`` stores a whole ``dns``
section (the config file's keys; left-out keys take their defaults) in the database, where it
overrides the config file's section until ``DELETE`` removes it. A bad value is refused with its
key (``dns.nameservers.global[1]: ...``) and nothing changes; so is a write the database refuses.
Connected clients get a change at once. The same operations serve the unix socket (``/v1/dns``,
``meshscale dns``; remote CLIs through /api/meshscale) and ``/api/v1/dns`` (meshscale.api.restdns).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request

from meshscale.errors import ConfigError, MeshscaleError, config_problems

if TYPE_CHECKING:
    from meshscale.dns.settings import DnsSettings


def running(settings: DnsSettings | None) -> DnsSettings:
    if settings is None:
        raise MeshscaleError("the server is not running yet")
    return settings


def show(dns: DnsSettings) -> dict[str, Any]:
    return dns.view()


def put(dns: DnsSettings, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or "dns" not in body:
        raise MeshscaleError('expected {"dns": {...}} with the dns section\'s keys '
                             "(docs/dns.md)")
    try:
        dns.set(body["dns"])
    except ConfigError as exc:
        # One line naming every key at fault.
        raise MeshscaleError("; ".join(str(p) for p in config_problems(exc))) from None
    return dns.view()


def delete(dns: DnsSettings) -> dict[str, Any]:
    dns.reset()
    return dns.view()


def add_routes(app: Quart, server_dns: Callable[[], DnsSettings | None]) -> None:
    """``/v1/dns`` on the admin socket's app."""

    def settings() -> DnsSettings:
        return running(server_dns())

    def answer(data: Any) -> Response:
        return Response(json.dumps(data), status=200, content_type="application/json")

    @app.get("/v1/dns")
    async def get_dns() -> Response:
        return answer(show(settings()))

    @app.put("/v1/dns")
    async def put_dns() -> Response:
        body = await request.get_json(force=True, silent=True)
        return answer(put(settings(), body))

    @app.delete("/v1/dns")
    async def delete_dns() -> Response:
        return answer(delete(settings()))

