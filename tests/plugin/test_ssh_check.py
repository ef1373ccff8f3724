"""Tailscale SSH check mode end to end with simulated nodes: the destination's SSHPolicy, its
GETs of ``/machine/ssh/action`` (as tailscaled's fetchSSHAction makes them), the hold, the
approval (administrator or the source's own user through a login provider), refusal, expiry,
and the checkPeriod the server applies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.request import urlopen

import pytest

from meshscale.auth import Identity
from meshscale.cli.client import AdminClient
from meshscale.control.sshcheck import ACCEPT
from meshscale.errors import MeshscaleError
from meshscale.server import Server
from meshscale.simclient import MapStream, SimNode
from meshscale.state.models import User
from tests.plugin.simnodes import join

pytestmark = pytest.mark.asyncio

POLICY = {
    "tagOwners": {"tag:server": ["alice@"], "tag:vault": ["alice@"]},
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
    "ssh": [
        {"action": "check", "src": ["autogroup:member"], "dst": ["tag:server"],
         "users": ["root"], "checkPeriod": "1h"},
        {"action": "check", "src": ["autogroup:member"], "dst": ["tag:vault"],
         "users": ["root"], "checkPeriod": "always"},
    ],
}


def action_path(src: int, dst: int, user: str = "root", auth_id: str = "") -> str:
    path = f"/machine/ssh/action/{src}/to/{dst}?local_user={user}"
    return path + (f"&auth_id={auth_id}" if auth_id else "")


def expand(url: str, src: int, dst: int, user: str = "root") -> str:
    """What tailscaled's expandDelegateURLLocked does, then the path it sends over Noise."""
    url = (url.replace("$SRC_NODE_ID", str(src)).replace("$DST_NODE_ID", str(dst))
           .replace("$LOCAL_USER", user))
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


async def get(node: SimNode, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    status, body = await node.conn.request(path, None, timeout, "GET")
    return status, (json.loads(body) if status == 200 else body.decode())


class Tailnet:
    def __init__(self, server: Server, alice: User, bob: User) -> None:
        self.server, self.alice, self.bob = server, alice, bob
        self.nodes: dict[str, tuple[SimNode, int]] = {}
        self.streams: list[MapStream] = []

    async def add(self, name: str, key: str) -> tuple[SimNode, int]:
        node, stream, first = await join(self.server, key, name)
        assert first is not None and stream is not None
        self.streams.append(stream)
        self.nodes[name] = (node, first["Node"]["ID"])
        self.first = first
        return self.nodes[name]


@pytest.fixture
async def net(meshscale_server_factory: Callable[..., Any]) -> Tailnet:
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "policy"], policy={"mode": "database"})
    state = server.state
    assert state is not None
    alice = state.create_user("alice", email="alice@example.com", provider="test",
                              provider_id="sub-alice")
    bob = state.create_user("bob", email="bob@example.com", provider="test",
                            provider_id="sub-bob")
    server.set_policy(json.dumps(POLICY), "database", persist=True)
    t = Tailnet(server, alice, bob)
    await t.add("laptop", state.create_key(alice)[1])
    await t.add("bobpc", state.create_key(bob)[1])
    await t.add("server", state.create_key(alice, tags=["tag:server"])[1])
    await t.add("vault", state.create_key(alice, tags=["tag:vault"])[1])
    return t


async def hold(net: Tailnet, src: str, dst: str) -> tuple[str, str]:
    """The first answer for a connection that needs a check: (auth id, follow-up path)."""
    (_, sid), (dnode, did) = net.nodes[src], net.nodes[dst]
    status, action = await get(dnode, action_path(sid, did))
    assert status == 200, action
    assert set(action) == {"message", "holdAndDelegate"}, action
    url = action["holdAndDelegate"]
    base = str(net.server.config.server_url).rstrip("/")
    assert url.startswith(f"{base}/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID"
                          "?local_user=$LOCAL_USER&auth_id="), url
    auth_id = url.rsplit("=", 1)[1]
    assert action["message"] == ("# Tailscale SSH requires an additional check.\n"
                                 f"# To authenticate, visit: {base}/register/{auth_id}\n")
    return auth_id, expand(url, sid, did)


async def test_the_destination_gets_the_check_rule(net: Tailnet) -> None:
    rules = net.first["SSHPolicy"]["rules"]  # vault, the last to join
    base = str(net.server.config.server_url).rstrip("/")
    assert [r["action"] for r in rules] == [{"holdAndDelegate": f"{base}/machine/ssh/action/"
                                             "$SRC_NODE_ID/to/$DST_NODE_ID"
                                             "?local_user=$LOCAL_USER"}]


async def test_check_approved_by_an_admin_then_valid_for_the_check_period(
        net: Tailnet) -> None:
    checks = net.server.plane.checks  # type: ignore[union-attr]
    auth_id, follow = await hold(net, "laptop", "server")
    server_node, _ = net.nodes["server"]
    waiting = asyncio.create_task(get(server_node, follow, timeout=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # held until someone acts
    # A second connection meanwhile waits on the same check.
    assert (await hold(net, "laptop", "server"))[0] == auth_id
    # The built-in page tells the administrator what to run.
    url = f"http://127.0.0.1:{net.server.main_port}/register/{auth_id}"
    page = await asyncio.to_thread(lambda: urlopen(url, timeout=5).read().decode())
    assert f"meshscale auth approve --auth-id {auth_id}" in page and "laptop" in page
    # The administrator approves (what `meshscale auth approve` calls on the admin socket).
    admin = AdminClient(str(net.server.admin_socket_path))
    shown = await asyncio.to_thread(admin.call, "POST", "/v1/auth/approve", {"authId": auth_id})
    assert shown["approved"] is True and shown["hostname"] == "laptop"
    assert shown["destination"] == "server" and shown["localUser"] == "root"
    assert await asyncio.wait_for(waiting, 5) == (200, ACCEPT)
    assert checks.get(auth_id) is None  # no longer waiting
    # Within checkPeriod (1h) the next connection is accepted at once.
    (_, lid), (_, sid) = net.nodes["laptop"], net.nodes["server"]
    assert await get(server_node, action_path(lid, sid)) == (200, ACCEPT)
    # An hour later it is checked again.
    alice = net.alice.id
    checks.checked[(alice, lid)] -= 3601
    await hold(net, "laptop", "server")
    # The check is alice's on laptop: bob's node is still checked.
    await hold(net, "bobpc", "server")


async def test_always_checks_every_connection(net: Tailnet) -> None:
    auth_id, follow = await hold(net, "laptop", "vault")
    vault, _ = net.nodes["vault"]
    waiting = asyncio.create_task(get(vault, follow))
    await asyncio.sleep(0.1)
    net.server.plane.checks.approve(auth_id, None)  # type: ignore[union-attr]
    assert await waiting == (200, ACCEPT)
    await hold(net, "laptop", "vault")  # checkPeriod "always": checked again


async def test_a_login_provider_lets_only_the_sources_user_approve(net: Tailnet) -> None:
    logins = net.server.logins()
    auth_id, follow = await hold(net, "laptop", "server")
    server_node, _ = net.nodes["server"]
    waiting = asyncio.create_task(get(server_node, follow))
    shown = logins.waiting(auth_id)
    assert shown is not None and shown["kind"] == "ssh-check"
    assert (shown["hostname"], shown["localUser"]) == ("laptop", "root")
    with pytest.raises(MeshscaleError, match="only that user may approve"):
        logins.complete(auth_id, Identity("test", "sub-bob", "bob"), "test")
    with pytest.raises(MeshscaleError, match="no devices here"):
        logins.complete(auth_id, Identity("test", "sub-nobody", "eve"), "test")
    users = len(net.server.state.users)  # type: ignore[union-attr]
    logins.complete(auth_id, Identity("test", "sub-alice", "alice"), "test")
    assert await asyncio.wait_for(waiting, 5) == (200, ACCEPT)
    # A follow-up retried after the approval (its long poll was cut) is still answered.
    assert await get(server_node, follow) == (200, ACCEPT)
    assert logins.waiting(auth_id) is None
    assert len(net.server.state.users) == users  # type: ignore[union-attr]  # none made


async def test_refused_check(net: Tailnet) -> None:
    auth_id, follow = await hold(net, "bobpc", "server")
    server_node, _ = net.nodes["server"]
    waiting = asyncio.create_task(get(server_node, follow))
    await asyncio.sleep(0.1)
    net.server.logins().reject(auth_id, "ignored")
    assert await waiting == (200, {"reject": True,
                                   "message": "tailscale: the SSH check was refused\n"})
    # A retried follow-up hears the same; the next connection starts a new check.
    assert (await get(server_node, follow))[1]["reject"] is True
    assert (await hold(net, "bobpc", "server"))[0] != auth_id


async def test_register_refuses_a_check_id(net: Tailnet) -> None:
    auth_id, _ = await hold(net, "laptop", "server")
    with pytest.raises(MeshscaleError, match="SSH check, not a login"):
        net.server.logins().register(auth_id, net.alice)  # type: ignore[attr-defined]


async def test_who_may_ask_and_what_is_refused(net: Tailnet) -> None:
    (laptop, lid), (server_node, sid) = net.nodes["laptop"], net.nodes["server"]
    (_, bid) = net.nodes["bobpc"]
    # Only the destination asks about connections to itself.
    status, body = await get(laptop, action_path(lid, sid))
    assert (status, body) == (403, "this machine is not the destination node\n")
    # No check rule covers root -> laptop, or user "alice" on server (the rule says root).
    status, body = await get(laptop, action_path(sid, lid))
    assert status == 200 and body["reject"] is True
    assert await get(server_node, action_path(lid, sid, "alice")) == (200, {
        "reject": True,
        "message": "tailscale: the tailnet policy no longer permits this connection\n"})
    # Unknown source node.
    status, body = await get(server_node, action_path(9999, sid))
    assert body == {"reject": True, "message": "tailscale: node 9999 is not in this tailnet\n"}
    # Malformed requests: 400 with the reason; POST: 405.
    for bad in (f"/machine/ssh/action/x/to/{sid}", f"/machine/ssh/action/{bid}/to/{sid}/more",
                action_path(bid, sid, "a" * 300), action_path(bid, sid, auth_id="short"),
                action_path(bid, sid) + "&local_user=other"):
        status, body = await get(server_node, bad)
        assert status == 400, (bad, status, body)
    status, _ = await server_node.conn.request(action_path(bid, sid), {})
    assert status == 405


async def test_expired_check(meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory(
        plugins=["sqlite", "policy"], policy={"mode": "database"},
        node={"auth_id_expiry": "1s"})
    state = server.state
    assert state is not None
    alice = state.create_user("alice", email="alice@example.com")
    server.set_policy(json.dumps(POLICY), "database", persist=True)
    net = Tailnet(server, alice, alice)
    await net.add("laptop", state.create_key(alice)[1])
    await net.add("server", state.create_key(alice, tags=["tag:server"])[1])
    _, follow = await hold(net, "laptop", "server")
    server_node, _ = net.nodes["server"]
    expired = "tailscale: the SSH check expired before anyone approved it\n"
    assert await get(server_node, follow, timeout=5) == (200, {"reject": True,
                                                               "message": expired})
