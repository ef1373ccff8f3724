"""headscale's OIDC keys about start-up and old user names, against a real OpenID provider:
``only_start_if_oidc_is_available`` (discovery is fetched at start-up; refuse, or start without
OIDC login), ``map_legacy_users`` with ``strip_email_domain`` (an existing user no identity owns
becomes the identity's user, matched by the verified e-mail as headscale before 0.23 named it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshscale.errors import PluginError
from meshscale.plugins.oidc.settings import legacy_user_name
from meshscale.ports import free_port
from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.oidcprovider import oidc_provider
from tests.plugin.test_oidc import full_login

Factory = Callable[..., Any]
PORTS = [free_port() for _ in range(6)]
_next = iter(PORTS)


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with oidc_provider([f"http://127.0.0.1:{p}/oidc/callback" for p in PORTS]) as url:
        yield url


async def oidc_server(factory: Factory, issuer: str, **oidc: Any) -> Server:
    server: Server = await factory(
        plugins=["sqlite", "oidc"], port=next(_next),
        oidc={"issuer": issuer, "client_id": "meshscale", "client_secret": "meshscale-secret",
              "scope": ["openid", "email", "profile"], **oidc})
    return server


def dead_issuer() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.asyncio
async def test_an_unavailable_issuer_refuses_the_start(meshscale_server_factory: Factory) -> None:
    issuer = dead_issuer()
    with pytest.raises(PluginError) as err:
        await oidc_server(meshscale_server_factory, issuer)
    message = str(err.value)
    assert message.startswith(f"plugin 'oidc': refusing to start: the OIDC issuer {issuer} is "
                              "not available: the identity provider cannot be reached")
    assert message.endswith("Fix oidc.issuer (or the provider), or set "
                            "oidc.only_start_if_oidc_is_available: false to start without OIDC "
                            "login")
    assert "\n" not in message


@pytest.mark.asyncio
async def test_without_only_start_the_server_starts_with_the_admin_page(
        meshscale_server_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    issuer = dead_issuer()
    caplog.set_level(logging.WARNING)
    server = await oidc_server(meshscale_server_factory, issuer,
                               only_start_if_oidc_is_available=False)
    assert f"the OIDC issuer {issuer} is not available" in caplog.text
    assert "OIDC login is off until the server restarts" in caplog.text
    node = SimNode("laptop")
    await node.conn.connect("127.0.0.1", server.main_port)
    url = (await node.register(None))["AuthURL"]
    assert url.startswith(f"{str(server.config.server_url).rstrip('/')}/register/"), url
    await node.conn.close()


def test_legacy_user_names_as_headscale_made_them() -> None:
    assert legacy_user_name("Alice.O'Neil@Example.com", True) == "alice.oneil"
    assert legacy_user_name("Alice.O'Neil@Example.com", False) == "alice.oneil.example.com"
    assert legacy_user_name("a+b@x.io", True) == "a-b"


@pytest.mark.asyncio
async def test_map_legacy_users_adopts_the_old_user(meshscale_server_factory: Factory,
                                                    issuer: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """alice@example.com logs in; the user "alice" no identity owns (an old headscale's, with
    strip_email_domain) becomes hers, once."""
    server = await oidc_server(meshscale_server_factory, issuer, map_legacy_users=True,
                               strip_email_domain=True)
    assert server.state is not None
    old = server.state.create_user("alice")
    caplog.set_level(logging.INFO, "meshscale.audit")
    lg, page = await full_login(server, "alice")
    assert (await lg.confirm(page.text)).status_code == 200
    assert lg.waiting is not None
    assert (await asyncio.wait_for(lg.waiting, 2))["MachineAuthorized"] is True
    (node,) = server.state.nodes.values()
    assert node.user_id == old.id
    user = server.state.users[old.id]
    assert (user.provider, user.provider_id, user.email) == ("oidc", f"{issuer}/alice",
                                                             "alice@example.com")
    assert f"user {old.id} alice: bound to login identity {issuer}/alice" in caplog.text
    await lg.close()


@pytest.mark.asyncio
async def test_map_legacy_users_with_the_whole_address(meshscale_server_factory: Factory,
                                                       issuer: str) -> None:
    """strip_email_domain false: headscale named the user alice.example.com; a user "bob" made
    by the admin is not taken, and a user some identity owns never is."""
    server = await oidc_server(meshscale_server_factory, issuer, map_legacy_users=True,
                               strip_email_domain=False)
    assert server.state is not None
    old = server.state.create_user("bob.example.com")
    other = server.state.create_user("bob")
    lg, page = await full_login(server, "bob")
    assert (await lg.confirm(page.text)).status_code == 200
    assert lg.waiting is not None
    assert (await asyncio.wait_for(lg.waiting, 2))["MachineAuthorized"] is True
    (node,) = server.state.nodes.values()
    assert node.user_id == old.id
    assert server.state.users[other.id].provider_id == ""
    await lg.close()


@pytest.mark.asyncio
async def test_without_map_legacy_users_nobody_is_adopted(
        meshscale_server_factory: Factory, issuer: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """The default: the login gets a user of its own; strip_email_domain alone is warned about
    (it changes nothing without map_legacy_users)."""
    caplog.set_level(logging.WARNING)
    server = await oidc_server(meshscale_server_factory, issuer, strip_email_domain=True)
    assert "oidc.strip_email_domain has no effect without oidc.map_legacy_users" in caplog.text
    assert server.state is not None
    old = server.state.create_user("alice")
    lg, page = await full_login(server, "alice")
    assert (await lg.confirm(page.text)).status_code == 200
    assert lg.waiting is not None
    await asyncio.wait_for(lg.waiting, 2)
    (node,) = server.state.nodes.values()
    assert node.user_id != old.id and server.state.users[old.id].provider_id == ""
    await lg.close()
