"""SetTags, BackfillNodeIPs and DebugCreateNode of /api/v1 (headscale v0.29.2's semantics)
against an in-process server with simulated nodes: a change reaches the connected peers' maps
through the node lifecycle; refusals change nothing."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from meshscale.api.admin import create_admin_app
from meshscale.server import Server
from tests.plugin.simnodes import join, next_with, quiet

pytestmark = pytest.mark.asyncio

POLICY = json.dumps({
    "tagOwners": {"tag:web": ["alice@"], "tag:db": ["tag:web"]},
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
})


class Api:
    def __init__(self, server: Server) -> None:
        assert server.apikeys is not None
        self.base = f"http://127.0.0.1:{server.main_port}"
        self.key = server.apikeys.create()[1]

    def _call(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.key}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    async def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        # In a thread: the server answering runs on this test's event loop.
        return await asyncio.to_thread(self._call, method, path, body)


@pytest.fixture
async def server(meshscale_server_factory: Callable[..., Any]) -> Server:
    srv: Server = await meshscale_server_factory(plugins=["sqlite", "policy"],
                                                 policy={"mode": "database"})
    return srv


async def _peer_entry(stream: Any, node_id: int) -> dict[str, Any]:
    """The next PeersChanged entry about ``node_id`` on ``stream``."""
    while True:
        msg = await next_with(stream, "PeersChanged")
        for peer in msg["PeersChanged"]:
            if peer["ID"] == node_id:
                return dict(peer)


async def test_set_tags_reaches_the_peers_and_is_checked_against_tag_owners(
        server: Server) -> None:
    assert server.state is not None
    api = Api(server)
    assert (await api("PUT", "/api/v1/policy", {"policy": POLICY}))[0] == 200
    user = server.state.create_user("alice")
    key = server.state.create_key(user, reusable=True)[1]
    _, sa, first_a = await join(server, key, "web1")
    _, sb, _ = await join(server, key, "laptop")
    assert sa is not None and sb is not None and first_a is not None
    a_id = first_a["Node"]["ID"]
    await quiet(sb)

    status, body = await api("POST", f"/api/v1/node/{a_id}/tags",
                             {"tags": ["tag:web", "tag:db", "tag:web"]})
    assert status == 200, body
    assert body["node"]["tags"] == ["tag:db", "tag:web"] and body["node"]["id"] == str(a_id)
    seen = await _peer_entry(sb, a_id)
    assert sorted(seen["Tags"]) == ["tag:db", "tag:web"]
    assert server.state.node(a_id).tags == ("tag:db", "tag:web")
    # ListNodes shows a tagged node as headscale v0.29 does: owned by tagged-devices (GetNode
    # keeps the user); the untagged one keeps alice.
    listed = {n["givenName"]: n["user"] for n in (await api("GET", "/api/v1/node"))[1]["nodes"]}
    assert (listed["web1"]["id"], listed["web1"]["name"], listed["web1"]["displayName"]) == (
        "2147455555", "tagged-devices", "Tagged Devices")
    assert listed["laptop"]["name"] == "alice"
    assert (await api("GET", f"/api/v1/node/{a_id}"))[1]["node"]["user"]["name"] == "alice"

    # Refusals, as headscale words them; the node keeps its tags and no peer hears of it.
    for tags, status_wanted, words in (
            ([], 400, "cannot remove all tags"), (["tag:nosuch"], 400, "not permitted"),
            (["web"], 400, "must start with"), (["tag:Web"], 400, "lowercase"),
            (["tag:a b"], 400, "spaces"), ("tag:web", 400, "list")):
        status, body = await api("POST", f"/api/v1/node/{a_id}/tags", {"tags": tags})
        assert status == status_wanted and words in body["message"], (tags, body)
        assert body["code"] == 3
    status, body = await api("POST", "/api/v1/node/999/tags", {"tags": ["tag:web"]})
    assert status == 404 and body["code"] == 5
    assert server.state.node(a_id).tags == ("tag:db", "tag:web")
    assert not [m for m in await quiet(sb) if "PeersChanged" in m]

    # The CLI's path (the admin socket's route) checks tagOwners the same way.
    admin = create_admin_app(server).test_client()
    resp = await admin.post(f"/v1/nodes/{a_id}/tags", json={"tags": ["tag:nosuch"]})
    assert resp.status_code == 400 and "not permitted" in (await resp.get_json())["error"]
    resp = await admin.post(f"/v1/nodes/{a_id}/tags", json={"tags": ["tag:web"]})
    assert resp.status_code == 200 and (await resp.get_json())["tags"] == ["tag:web"]
    assert (await _peer_entry(sb, a_id))["Tags"] == ["tag:web"]


async def test_backfill_needs_confirmation(server: Server) -> None:
    api = Api(server)
    assert server.state is not None
    user = server.state.create_user("alice")
    await join(server, server.state.create_key(user)[1], "web1", stream=False)
    for query in ("", "?confirmed=false", "?confirmed=0"):
        status, body = await api("POST", f"/api/v1/node/backfillips{query}")
        assert status == 400 and "not confirmed" in body["message"], body
    assert (await api("POST", "/api/v1/node/backfillips?confirmed=maybe"))[0] == 400
    # Every node has both families here: nothing to do, and it says so with no change.
    assert await api("POST", "/api/v1/node/backfillips?confirmed=true") == (200, {"changes": []})


async def test_debug_create_node_waits_for_registration_and_peers_see_it(
        server: Server) -> None:
    api = Api(server)
    assert server.state is not None
    user = server.state.create_user("alice")
    _, sa, _ = await join(server, server.state.create_key(user)[1], "laptop")
    assert sa is not None
    await quiet(sa)
    auth_id = "debugdebugdebugdebug0001"

    status, body = await api("POST", "/api/v1/debug/node", {
        "user": "alice", "key": auth_id, "name": "debugnode", "routes": ["10.9.0.0/24"]})
    assert status == 200, body
    echo = body["node"]
    assert echo["id"] == "0" and echo["name"] == "debugnode"
    assert echo["user"]["name"] == "alice" and echo["availableRoutes"] == ["10.9.0.0/24"]
    assert len(server.state.nodes) == 1  # only waiting, not registered

    for bad, code in (({"user": "nosuch", "key": "x" * 24}, 404),
                      ({"user": "alice", "key": "short"}, 400),
                      ({"user": "alice", "key": auth_id}, 400),  # already waiting
                      ({"user": "alice", "key": "y" * 24, "routes": ["10.9.0.0/99"]}, 400),
                      ({"key": "z" * 24}, 400)):
        status, body = await api("POST", "/api/v1/debug/node", bad)
        assert status == code, (bad, body)
    assert len(server.state.nodes) == 1

    status, body = await api("POST", "/api/v1/auth/register",
                             {"user": "alice", "authId": auth_id})
    assert status == 200, body
    node = body["node"]
    assert node["name"] == "debugnode" and node["availableRoutes"] == ["10.9.0.0/24"]
    assert node["machineKey"] == echo["machineKey"] and node["nodeKey"] == echo["nodeKey"]
    seen = await _peer_entry(sa, int(node["id"]))
    assert seen["Name"].startswith("debugnode.")
    # used: the same auth id is not waiting any more
    assert (await api("POST", "/api/v1/auth/register",
                      {"user": "alice", "authId": auth_id}))[0] == 404
