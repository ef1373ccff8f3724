"""A third-party way to log in (``meshscale_auth_providers``), end to end on an in-process server:
the keyless client is sent to the plugin's URL, the plugin completes the login with an identity,
the waiting client proceeds; a provider that passes leaves the login to the admin page; the user
is found by (provider, subject), never by e-mail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from quart import Response, request

from meshscale import hookimpl
from meshscale.auth import AuthProvider, Identity
from meshscale.config import Config
from meshscale.context import ServerContext
from meshscale.contributions import HttpRoute
from meshscale.server import Server
from meshscale.simclient import SimNode

pytestmark = pytest.mark.asyncio

Factory = Callable[..., Any]


class HeaderLogin:
    """Logs in the user a trusted proxy names in ``X-User`` (a contrib-style example)."""

    name = "header"

    def __init__(self, server: ServerContext) -> None:
        self.server = server
        self.url = ""

    def auth_url(self, auth_id: str, hostinfo: Mapping[str, Any]) -> str | None:
        if str(hostinfo.get("Hostname", "")).startswith("admin-only"):
            return None  # this one is left to the next provider: the admin page
        return f"{self.url}/header-login/{auth_id}"

    @hookimpl
    def meshscale_auth_providers(self, config: Config) -> Sequence[AuthProvider]:
        self.url = str(config.server_url).rstrip("/")
        return [self]

    @hookimpl
    def meshscale_http_routes(self, config: Config) -> Sequence[HttpRoute]:
        async def login(auth_id: str) -> Response:
            logins = self.server.logins()
            if logins.waiting(auth_id) is None:
                return Response("no such login\n", status=404)
            user = request.headers.get("X-User", "")
            if not user:
                logins.reject(auth_id, "the proxy named nobody")
                return Response("refused\n", status=403)
            node = logins.complete(auth_id, Identity("header", f"proxy/{user}", user,
                                                     email=f"{user}@example.com"), "header")
            return Response(f"registered {node['givenName']} to {node['user']}\n")

        return [HttpRoute("/header-login/<auth_id>", login)]


async def http_get(port: int, path: str, headers: str = "") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def keyless(server: Server, hostname: str) -> tuple[SimNode, str]:
    node = SimNode(hostname)
    await node.conn.connect("127.0.0.1", server.main_port)
    first = await node.register(None)
    return node, str(first["AuthURL"])


async def test_a_plugin_login_provider_registers_the_node(meshscale_server_factory: Factory
                                                          ) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite", ("header", HeaderLogin)])
    assert server.state is not None
    # An admin-made user with the same e-mail: a login must never land on it by e-mail.
    server.state.create_user("carol", email="carol@example.com")
    node, url = await keyless(server, "laptop")
    assert url.startswith(str(server.config.server_url).rstrip("/") + "/header-login/")
    waiting = asyncio.create_task(node.register(None, Followup=url))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the follow-up is held until the login ends
    path = url.split(str(server.main_port), 1)[1]
    reply = await http_get(server.main_port, path, "X-User: carol\r\n")
    assert b"registered laptop to carol-2" in reply, reply
    resp = await asyncio.wait_for(waiting, 2)
    assert resp["MachineAuthorized"] is True and resp["Login"]["LoginName"] == "carol@example.com"
    users = {u.name: u for u in server.state.users.values()}
    assert users["carol-2"].provider == "header" and users["carol-2"].provider_id == "proxy/carol"
    assert users["carol"].provider == ""  # untouched
    (registered,) = server.state.nodes.values()
    assert registered.user_id == users["carol-2"].id and registered.register_method == "header"
    await node.conn.close()

    # Same identity again (another machine): the same user, no new one.
    node2, url2 = await keyless(server, "desktop")
    waiting = asyncio.create_task(node2.register(None, Followup=url2))
    reply = await http_get(server.main_port, url2.split(str(server.main_port), 1)[1],
                           "X-User: carol\r\n")
    assert b"to carol-2" in reply and (await asyncio.wait_for(waiting, 2))["MachineAuthorized"]
    assert len(server.state.users) == 2
    await node2.conn.close()

    # Refused by the provider: the waiting client gets its reason.
    node3, url3 = await keyless(server, "tablet")
    waiting = asyncio.create_task(node3.register(None, Followup=url3))
    await http_get(server.main_port, url3.split(str(server.main_port), 1)[1])
    assert (await asyncio.wait_for(waiting, 2))["Error"] == "the proxy named nobody"
    await node3.conn.close()

    # A provider that passes: the built-in admin page.
    node4, url4 = await keyless(server, "admin-only-box")
    assert url4.endswith("/register/" + url4.rsplit("/", 1)[1]) and "header" not in url4
    await node4.conn.close()
