"""OIDC login against a real OpenID provider (npm oidc-provider, tests/oidcprovider.py), on
in-process servers with a simulated client: the whole browser flow over HTTP with a cookie jar,
and each refusal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from meshscale.ports import free_port
from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.oidcprovider import browser_login, confirm_token, oidc_provider

pytestmark = pytest.mark.asyncio

Factory = Callable[..., Any]
PORTS = [free_port() for _ in range(14)]


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with oidc_provider([f"http://127.0.0.1:{p}/oidc/callback" for p in PORTS]) as url:
        yield url


_next = iter(PORTS)


async def oidc_server(factory: Factory, issuer: str, **oidc: Any) -> Server:
    server: Server = await factory(
        plugins=["sqlite", "oidc"], port=next(_next),
        oidc={"issuer": issuer, "client_id": "meshscale", "client_secret": "meshscale-secret",
              "scope": ["openid", "email", "profile", "groups"], **oidc})
    return server


class Login:
    """A keyless client waiting on its AuthURL, and a browser with a cookie jar."""

    def __init__(self, server: Server, hostname: str = "laptop") -> None:
        self.server = server
        self.node = SimNode(hostname)
        self.base = str(server.config.server_url).rstrip("/")
        self.browser = httpx.AsyncClient(timeout=10)
        self.url = ""
        self.waiting: asyncio.Task[dict[str, Any]] | None = None

    async def begin(self) -> str:
        await self.node.conn.connect("127.0.0.1", self.server.main_port)
        self.url = str((await self.node.register(None))["AuthURL"])
        self.waiting = asyncio.create_task(self.node.register(None, Followup=self.url))
        return self.url

    async def to_callback(self, login: str) -> str:
        return await browser_login(self.browser, self.url, login, f"{self.base}/oidc/callback")

    async def confirm(self, page: str) -> httpx.Response:
        return await self.browser.post(f"{self.base}/oidc/confirm",
                                       data={"token": confirm_token(page)})

    async def close(self) -> None:
        if self.waiting is not None:
            self.waiting.cancel()
        await self.browser.aclose()
        await self.node.conn.close()


async def full_login(server: Server, login: str, hostname: str = "laptop"
                     ) -> tuple[Login, httpx.Response]:
    lg = Login(server, hostname)
    await lg.begin()
    page = await lg.browser.get(await lg.to_callback(login))
    return lg, page


async def test_login_registers_the_node_to_the_identity(meshscale_server_factory: Factory,
                                                        issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer)
    lg, page = await full_login(server, "alice")
    try:
        assert lg.url.startswith(f"{lg.base}/oidc/register/")
        assert page.status_code == 200, page.text
        # The confirmation names the device and the account; nothing is registered before it.
        assert "laptop" in page.text and "Alice Admin" in page.text
        assert "alice@example.com" in page.text
        assert server.state is not None and not server.state.nodes
        assert lg.waiting is not None and not lg.waiting.done()
        done = await lg.confirm(page.text)
        assert done.status_code == 200 and "Device registered" in done.text, done.text
        resp = await asyncio.wait_for(lg.waiting, 2)
        assert resp["MachineAuthorized"] is True
        assert resp["Login"]["LoginName"] == "alice@example.com"
        (user,) = server.state.users.values()
        assert (user.name, user.display_name, user.email, user.provider, user.provider_id) == \
            ("alice", "Alice Admin", "alice@example.com", "oidc", f"{issuer}/alice")
        (node,) = server.state.nodes.values()
        assert node.user_id == user.id and node.register_method == "oidc"
        assert node.expiry is not None  # oidc.expiry, 180 days by default
        # The confirmation is single use.
        again = await lg.confirm(page.text)
        assert again.status_code == 400
    finally:
        await lg.close()


async def test_outside_allowed_domains(meshscale_server_factory: Factory, issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer, allowed_domains=["example.org"])
    lg, page = await full_login(server, "alice")
    assert page.status_code == 403 and "allowed_domains" in page.text
    await lg.close()


async def test_outside_allowed_users(meshscale_server_factory: Factory, issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer,
                               allowed_users=["bob@example.com"])
    lg, page = await full_login(server, "alice")
    assert page.status_code == 403 and "allowed_users" in page.text
    await lg.close()
    lg, page = await full_login(server, "bob")
    assert page.status_code == 200, page.text
    await lg.close()


async def test_outside_allowed_groups(meshscale_server_factory: Factory, issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer, allowed_groups=["admins"])
    lg, page = await full_login(server, "bob")  # devs only
    assert page.status_code == 403 and "allowed_groups" in page.text
    await lg.close()


async def test_unverified_email(meshscale_server_factory: Factory, issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer)
    lg, page = await full_login(server, "carol")
    assert page.status_code == 403 and "not verified" in page.text
    await lg.close()


async def test_replayed_state(meshscale_server_factory: Factory, issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer)
    lg = Login(server)
    await lg.begin()
    callback = await lg.to_callback("alice")
    assert (await lg.browser.get(callback)).status_code == 200
    replay = await lg.browser.get(callback)
    assert replay.status_code == 400 and "already used" in replay.text
    await lg.close()


async def test_state_from_another_browser(meshscale_server_factory: Factory,
                                          issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer)
    lg = Login(server)
    await lg.begin()
    callback = await lg.to_callback("alice")
    async with httpx.AsyncClient(timeout=10) as other:  # no cookie: another browser
        r = await other.get(callback)
    assert r.status_code == 400 and "another browser" in r.text
    await lg.close()


@contextmanager
def misbehaving(tamper: str) -> Iterator[tuple[str, int]]:
    """A provider of its own that misbehaves (tests/oidc/provider.mjs OP_TAMPER): (issuer, the
    port the server must listen on)."""
    port = free_port()
    with oidc_provider([f"http://127.0.0.1:{port}/oidc/callback"], tamper=tamper) as url:
        yield url, port


@pytest.mark.parametrize(("tamper", "refusal"), [
    # The provider signs an ID token whose nonce is not the one this login sent (a token
    # minted for another login): authlib's claim check refuses it; the signature is valid.
    ("nonce", "InvalidClaimError"),
    # The token response carries an ID token whose subject was changed after signing.
    ("id_token", "BadSignatureError"),
])
async def test_misbehaving_provider_token_refused(meshscale_server_factory: Factory,
                                                  tamper: str, refusal: str) -> None:
    """A wrong nonce or a tampered ID token from the real provider: refused, nothing stored."""
    with misbehaving(tamper) as (issuer, port):
        server: Server = await meshscale_server_factory(
            plugins=["sqlite", "oidc"], port=port,
            oidc={"issuer": issuer, "client_id": "meshscale",
                  "client_secret": "meshscale-secret"})
        lg = Login(server)
        await lg.begin()
        r = await lg.browser.get(await lg.to_callback("alice"))
        assert r.status_code == 403 and f"ID token is not valid: {refusal}" in r.text, r.text
        assert server.state is not None
        assert not server.state.nodes and not server.state.users
        await lg.close()


async def test_expired_auth_id(meshscale_server_factory: Factory, issuer: str) -> None:
    server = await oidc_server(meshscale_server_factory, issuer)
    server.plane.logins.pending.ttl = 0.3  # type: ignore[union-attr]
    lg = Login(server)
    await lg.begin()
    assert lg.waiting is not None
    resp = await asyncio.wait_for(lg.waiting, 3)
    assert "expired" in resp["Error"]
    r = await lg.browser.get(lg.url)
    assert r.status_code == 404 and "not valid" in r.text
    await lg.close()


async def test_same_email_from_another_issuer_does_not_take_over(
        meshscale_server_factory: Factory, issuer: str) -> None:
    """A user alice@example.com made by another issuer: this issuer's alice gets her own user."""
    server = await oidc_server(meshscale_server_factory, issuer)
    assert server.state is not None
    victim = server.state.create_user("alice", email="alice@example.com", provider="oidc",
                                      provider_id="https://other-issuer.example/alice")
    lg, page = await full_login(server, "alice")
    assert (await lg.confirm(page.text)).status_code == 200
    assert lg.waiting is not None
    assert (await asyncio.wait_for(lg.waiting, 2))["MachineAuthorized"] is True
    (node,) = server.state.nodes.values()
    owner = server.state.users[node.user_id]  # type: ignore[index]
    assert owner.id != victim.id and owner.name == "alice-2"
    assert owner.provider_id == f"{issuer}/alice"
    assert not list(server.state.user_nodes(victim.id))
    await lg.close()


async def test_groups_claim_fills_policy_groups_and_is_refreshed_on_login(
        meshscale_server_factory: Factory, issuer: str) -> None:
    """group:devs (declared empty in the policy) holds the users whose `groups` claim says devs;
    the claim is read again on each login."""
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "policy", "oidc"], port=next(_next),
        oidc={"issuer": issuer, "client_id": "meshscale", "client_secret": "meshscale-secret",
              "scope": ["openid", "email", "profile", "groups"]})
    assert server.state is not None
    server.set_policy('{"groups": {"group:devs": []}, "acls": [{"action": "accept", '
                      '"src": ["group:devs"], "dst": ["*:*"]}]}', "test", False)
    ops = server.state.create_user("ops")
    _, key = server.state.create_key(ops, reusable=True)
    server_node = SimNode("server")
    await server_node.conn.connect("127.0.0.1", server.main_port)
    assert (await server_node.register(key))["MachineAuthorized"] is True
    target = next(iter(server.state.nodes.values()))

    def reaches_target(ip: str) -> bool:
        return ip in str(server.engine.packet_filter(target.id))

    lg, page = await full_login(server, "bob")
    assert (await lg.confirm(page.text)).status_code == 200
    assert lg.waiting is not None
    assert (await asyncio.wait_for(lg.waiting, 2))["MachineAuthorized"] is True
    bob = server.state.by_identity("oidc", f"{issuer}/bob")
    assert bob is not None and bob.groups == ("devs",)
    bob_node = next(n for n in server.state.nodes.values() if n.user_id == bob.id)
    assert bob_node.ipv4 and reaches_target(bob_node.ipv4)
    await lg.close()

    # Out of the group (as if the provider had dropped it): no access; the next login refreshes.
    server.state.refresh_profile(bob, "", "", "", ())
    assert not reaches_target(bob_node.ipv4)
    lg, page = await full_login(server, "bob")
    assert (await lg.confirm(page.text)).status_code == 200
    await asyncio.wait_for(lg.waiting, 2)  # type: ignore[arg-type]
    assert server.state.users[bob.id].groups == ("devs",)
    assert reaches_target(bob_node.ipv4)
    await lg.close()
    await server_node.conn.close()


async def test_ssh_check_is_approved_by_the_source_user_only(
        meshscale_server_factory: Factory, issuer: str) -> None:
    """Tailscale SSH check mode through OIDC: the SSH banner's URL is the OIDC login; bob's
    account cannot approve alice's connection, alice's can, and her connection proceeds."""
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "policy", "oidc"], port=next(_next),
        oidc={"issuer": issuer, "client_id": "meshscale", "client_secret": "meshscale-secret",
              "scope": ["openid", "email", "profile"]})
    assert server.state is not None and server.plane is not None
    for name in ("alice", "bob"):  # each logs a laptop in through OIDC
        lg, page = await full_login(server, name, f"{name}-laptop")
        assert (await lg.confirm(page.text)).status_code == 200
        assert (await asyncio.wait_for(lg.waiting, 2))["MachineAuthorized"]  # type: ignore[arg-type]
        await lg.close()
    alice = server.state.by_identity("oidc", f"{issuer}/alice")
    assert alice is not None
    server.set_policy('{"tagOwners": {"tag:server": ["alice@example.com"]}, "acls": [{"action": '
                      '"accept", "src": ["*"], "dst": ["*:*"]}], "ssh": [{"action": "check", '
                      '"src": ["autogroup:member"], "dst": ["tag:server"], "users": ["root"]}]}',
                      "test", False)
    dst = SimNode("server")
    await dst.conn.connect("127.0.0.1", server.main_port)
    _, key = server.state.create_key(alice, tags=["tag:server"])
    assert (await dst.register(key))["MachineAuthorized"] is True
    dst_id = next(n.id for n in server.state.nodes.values() if n.hostname == "server")
    src_id = next(n.id for n in server.state.nodes.values() if n.hostname == "alice-laptop")
    status, body = await dst.conn.request(
        f"/machine/ssh/action/{src_id}/to/{dst_id}?local_user=root", None, method="GET")
    action = json.loads(body)
    base = str(server.config.server_url).rstrip("/")
    auth_url = action["message"].split("visit: ", 1)[1].strip()
    assert status == 200 and auth_url.startswith(f"{base}/oidc/register/")
    auth_id = auth_url.rsplit("/", 1)[1]
    follow = f"/machine/ssh/action/{src_id}/to/{dst_id}?local_user=root&auth_id={auth_id}"
    waiting = asyncio.create_task(dst.conn.request(follow, None, 20, "GET"))
    for who, allowed in (("bob", False), ("alice", True)):
        browser = httpx.AsyncClient(timeout=10)
        callback = await browser_login(browser, auth_url, who, f"{base}/oidc/callback")
        page = await browser.get(callback)
        assert page.status_code == 200 and "Confirm Tailscale SSH" in page.text, page.text
        assert "alice-laptop" in page.text and "root" in page.text
        done = await browser.post(f"{base}/oidc/confirm", data={"token": confirm_token(page.text)})
        await browser.aclose()
        if not allowed:
            assert done.status_code == 400 and "only that user may approve" in done.text
            assert not waiting.done()
    assert done.status_code == 200 and "SSH connection allowed" in done.text, done.text
    status, body = await asyncio.wait_for(waiting, 5)
    assert status == 200 and json.loads(body)["accept"] is True
    await dst.conn.close()
