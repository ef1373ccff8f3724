"""meshscale-webhooks, installed (pip install ./contrib_plugins/meshscale-webhooks) and enabled by
config alone, against in-process servers (``meshscale_server_factory``, shipped by meshscale as a
pytest plugin), simulated nodes, and real HTTP receivers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pytest
from meshscale.cli.client import AdminClient
from meshscale.errors import ConfigError
from meshscale.ports import free_port
from meshscale.simclient import SimNode
from receiver import Receiver

Factory = Callable[..., Any]
SECRET = "test-secret"


@pytest.fixture
async def receiver() -> Any:
    r = await Receiver().start()
    yield r
    await r.stop()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


def dead_url() -> str:
    """A URL nothing listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


async def admin(server: Any, method: str, path: str, body: Any = None) -> Any:
    client = AdminClient(str(server.admin_socket_path))
    return await asyncio.to_thread(client.call, method, path, body)


async def join(server: Any, name: str, key: str) -> tuple[SimNode, Any, float]:
    """Register and open a stream; returns the seconds until the full map arrived."""
    started = time.monotonic()
    node = SimNode(name)
    await node.conn.connect("127.0.0.1", server.main_port)
    resp = await node.register(key)
    assert resp["MachineAuthorized"] is True, resp
    stream = node.open_stream()
    assert await stream.next() is not None
    return node, stream, time.monotonic() - started


def test_installed_as_a_meshscale_plugin() -> None:
    (ep,) = [e for e in metadata.entry_points(group="meshscale") if e.name == "webhooks"]
    assert ep.value == "meshscale_webhooks:WebhooksPlugin"
    assert ep.dist is not None and ep.dist.name == "meshscale-webhooks"


async def test_delivers_signed_events_in_order(
    meshscale_server_factory: Factory, receiver: Receiver
) -> None:
    server = await meshscale_server_factory(
        plugins=["sqlite", "policy", "webhooks"], policy={"mode": "database"},
        webhooks={"urls": [receiver.url], "secret": SECRET, "timeout": "2s"})
    await admin(server, "POST", "/v1/users", {"name": "alice"})
    key = (await admin(server, "POST", "/v1/preauthkeys",
                       {"user": "alice", "reusable": True, "expiration": 3600}))["key"]
    a, _, _ = await join(server, "a", key)
    b, _, _ = await join(server, "b", key)
    await b.conn.close()
    await admin(server, "PUT", "/v1/policy",
                {"policy": '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'})
    nodes = {n["name"]: n["id"] for n in await admin(server, "GET", "/v1/nodes")}
    await admin(server, "DELETE", f"/v1/nodes/{nodes['b']}")

    got = await receiver.wait_for(8)
    for r in got:
        expected = "sha256=" + hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers["x-meshscale-signature"], expected)
        assert r.headers["x-meshscale-event"] == r.event["type"]
        assert r.headers["content-type"] == "application/json"
    events = [r.event for r in got]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [e["type"] for e in events] == [
        "user.created", "node.registered", "node.online", "node.registered", "node.online",
        "node.offline", "policy.changed", "node.deleted"]
    b_events = [e["type"] for e in events if e["data"].get("node_id") == nodes["b"]]
    assert b_events == ["node.registered", "node.online", "node.offline", "node.deleted"]
    assert events[1]["data"]["hostname"] == "a" and events[1]["data"]["user"] == "alice"
    assert events[0]["data"]["name"] == "alice"
    # The receiver records a request before it answers: give the answer time to arrive.
    await until(lambda: server.stats()["webhooks_delivered_total"] == 8)
    await a.conn.close()


async def test_approving_a_waiting_node_sends_node_approved(
    meshscale_server_factory: Factory, receiver: Receiver
) -> None:
    """node.approval: manual: a node that waits gets node.approved when an admin lets it in; one
    registered with a pre-approved key never waited and gets none. Taking an approval back
    (nodes unapprove) sends node.unapproved."""
    server = await meshscale_server_factory(
        plugins=["sqlite", "webhooks"], node={"approval": "manual"},
        webhooks={"urls": [receiver.url], "secret": SECRET})
    await admin(server, "POST", "/v1/users", {"name": "alice"})
    key = (await admin(server, "POST", "/v1/preauthkeys", {"user": "alice"}))["key"]
    pre = (await admin(server, "POST", "/v1/preauthkeys",
                       {"user": "alice", "preauthorized": True}))["key"]
    waiting = SimNode("waiting")
    await waiting.conn.connect("127.0.0.1", server.main_port)
    assert (await waiting.register(key))["MachineAuthorized"] is False
    nodes = {n["name"]: n["id"] for n in await admin(server, "GET", "/v1/nodes")}
    await admin(server, "POST", f"/v1/nodes/{nodes['waiting']}/approve")
    ready = SimNode("ready")
    await ready.conn.connect("127.0.0.1", server.main_port)
    assert (await ready.register(pre))["MachineAuthorized"] is True
    await admin(server, "POST", f"/v1/nodes/{nodes['waiting']}/unapprove")

    events = [r.event for r in await receiver.wait_for(5)]
    assert [(e["type"], e["data"].get("hostname")) for e in events] == [
        ("user.created", None), ("node.registered", "waiting"), ("node.approved", "waiting"),
        ("node.registered", "ready"), ("node.unapproved", "waiting")]
    assert events[2]["data"]["node_id"] == nodes["waiting"]
    assert events[2]["data"]["user"] == "alice"
    assert events[4]["data"]["node_id"] == nodes["waiting"]
    await until(lambda: server.stats()["webhooks_delivered_total"] == 5)
    await asyncio.sleep(0.2)
    assert len(receiver.got) == 5  # and nothing more
    for n in (waiting, ready):
        await n.conn.close()


async def test_retries_with_backoff_then_delivers_once(
    meshscale_server_factory: Factory, receiver: Receiver
) -> None:
    receiver.statuses = [503, 503]  # down twice, then fine
    server = await meshscale_server_factory(
        plugins=["sqlite", "webhooks"],
        webhooks={"urls": [receiver.url], "secret": SECRET, "backoff": "50ms"})
    await admin(server, "POST", "/v1/users", {"name": "bob"})
    (got,) = await receiver.wait_for(1)
    assert got.event["type"] == "user.created"
    await until(lambda: server.stats()["webhooks_delivered_total"] == 1)
    assert len(receiver.got) == 1
    stats = server.stats()
    assert stats["webhooks_delivered_total"] == 1 and stats["webhooks_failed_total"] == 0


async def test_a_down_or_slow_receiver_never_slows_the_server(
    meshscale_server_factory: Factory,
) -> None:
    slow = await Receiver(delay=3.0).start()
    try:
        baseline = await meshscale_server_factory(plugins=["sqlite"])
        hooked = await meshscale_server_factory(
            plugins=["sqlite", "webhooks"],
            webhooks={"urls": [dead_url(), slow.url], "secret": SECRET, "timeout": "5s",
                      "queue_size": 4})
        timings: dict[str, list[float]] = {}
        for name, server in (("baseline", baseline), ("webhooks", hooked)):
            assert server.state is not None
            user = server.state.create_user("carol")
            _, key = server.state.create_key(user, reusable=True)
            first, first_stream, _ = await join(server, f"{name}-0", key)
            timings[name] = []
            nodes = [first]
            for i in range(1, 9):
                node, _, seconds = await join(server, f"{name}-{i}", key)
                timings[name].append(seconds)
                nodes.append(node)
                # The first node learns of each newcomer promptly, on its open stream.
                delta = await asyncio.wait_for(first_stream.next(), 1.0)
                assert delta is not None
            for node in nodes:
                await node.conn.close()
        fast, hooked_t = timings["baseline"], timings["webhooks"]
        assert max(hooked_t) < 1.0, hooked_t
        assert statistics.median(hooked_t) < 3 * statistics.median(fast) + 0.05, (fast, hooked_t)
        # The receivers could not keep up: the queues filled and new events were dropped.
        stats = hooked.stats()
        assert stats["webhooks_dropped_total"] > 0
        assert stats["webhooks_queued"] <= 2 * 4
    finally:
        await slow.stop()


def test_config_is_checked_with_its_path() -> None:
    from meshscale_webhooks.settings import parse

    with pytest.raises(ConfigError, match=r"webhooks\.urls\[1\]"):
        parse({"urls": ["http://127.0.0.1:1/x", "ftp://x"], "secret": "s"}, "webhooks")
    with pytest.raises(ConfigError, match=r"webhooks\.secret"):
        parse({"urls": ["http://127.0.0.1:1/x"]}, "webhooks")
    with pytest.raises(ConfigError, match=r"webhooks\.colour"):
        parse({"colour": "red"}, "webhooks")
    with pytest.raises(ConfigError, match=r"webhooks\.queue_size"):
        parse({"queue_size": 0}, "webhooks")
    settings = parse({"urls": ["https://h.example/x"], "secret": "s", "timeout": "1.5s"},
                     "webhooks")
    assert settings.timeout == 1.5 and settings.urls == ("https://h.example/x",)
