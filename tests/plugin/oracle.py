"""The oracle: what a freshly started server would send each node, from the same database.

``fresh_maps`` rebuilds state and policy from storage through ``Server.build_core`` (the very
start-up path) and builds every node's full map with a new Mapper. Only what a client reports at
run time and the database does not hold on every change (online, last seen, endpoints, disco
key, home DERP, NetInfo) is copied from the running server first: a restarted server learns
those from its clients' first requests.

``Fleet`` keeps a ``NetMap`` per open stream, applying every message as a client does, and
``assert_matches_fresh`` compares each with the fresh full map.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.mapper.frames import Message
from meshscale.mapper.mapper import Mapper
from meshscale.mapper.session import MapSession
from meshscale.server import Server
from meshscale.simclient import ControlConnection, MapStream, SimNode
from meshscale.state.models import utcnow
from meshscale.state.routes import RouteTable
from tests.plugin.netmap import NetMap


def fresh_maps(server: Server) -> dict[int, dict[str, Any]]:
    """node id -> the full MapResponse a server started on this database sends it."""
    assert server.storage is not None and server.state is not None
    live = server.state
    state, engine, _ = server.build_core(server.storage.load())
    for node in state.nodes_sorted():
        now = live.nodes.get(node.id)
        if now is None:
            continue
        node.endpoints, node.disco_key, node.home_derp = now.endpoints, now.disco_key, now.home_derp
        if "NetInfo" in now.hostinfo:
            node.hostinfo = {**node.hostinfo, "NetInfo": now.hostinfo["NetInfo"]}
        if now.online:
            state.set_online(node, True)  # as when its client connects to a restarted server
        node.last_seen = now.last_seen
    _adopt_primaries(live.routes, state.routes)
    dns = server.build_dns(server.storage.load())
    mapper = Mapper(server.config, state, engine, server.derp_map, dns=dns.in_force)
    out = {}
    for node_id in state.nodes:
        body = mapper.full_map(MapSession(node_id, False)).body
        out[node_id] = json.loads(body)
    return out


def _adopt_primaries(live: RouteTable, fresh: RouteTable) -> None:
    """Primaries are sticky (a working primary keeps its prefixes when a lower-ID router comes
    back), so which of several eligible routers is primary depends on history, and a restarted
    server may pick another. Check the live election is valid, then let the fresh table use
    the same winners: everything derived from them must then be equal."""
    for prefix, winner in live.primary.items():
        assert winner in live.eligible and winner in live.routers.get(prefix, ()), (
            f"{prefix}: primary {winner} is not an eligible router of it")
    for prefix, ids in live.routers.items():
        if any(i in live.eligible for i in ids):
            assert prefix in live.primary, f"{prefix} has eligible routers {ids}, no primary"
    for prefix, winner in live.primary.items():
        if winner in fresh.eligible and winner in fresh.routers.get(prefix, ()):
            fresh.primary[prefix] = winner
    fresh._relist(set(fresh.subnets))


class Fleet:
    """Simulated nodes with open streams, and the netmap each stream's client holds."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.nodes: dict[int, SimNode] = {}
        self.streams: dict[int, MapStream] = {}
        self.maps: dict[int, NetMap] = {}
        self._marker = 0

    async def join(self, key: str, hostname: str, **hostinfo: Any) -> int:
        node = SimNode(hostname)
        node.hostinfo.update(hostinfo)
        await node.conn.connect("127.0.0.1", self.server.main_port)
        resp = await node.register(key)
        node_id = self._id_of(node)
        assert resp.get("MachineAuthorized") is self._approved(node_id), resp
        self.nodes[node_id] = node
        await self.open(node_id)
        return node_id

    def _approved(self, node_id: int) -> bool:
        """False while the node waits for approval (node.approval: manual)."""
        assert self.server.state is not None
        return self.server.state.nodes[node_id].approved

    def _id_of(self, node: SimNode) -> int:
        assert self.server.state is not None
        found = self.server.state.by_node_key(bytes.fromhex(node.node_key_text[8:]))
        assert found is not None
        return found.id

    async def open(self, node_id: int) -> None:
        """(Re)open the node's map stream: a new client session starts from an empty netmap."""
        stream = self.nodes[node_id].open_stream()
        first = await stream.next()
        assert first is not None and "Node" in first, first
        self.streams[node_id] = stream
        self.maps[node_id] = NetMap()
        self.maps[node_id].apply(first)

    async def poll_again(self, node_id: int) -> None:
        """The server ended the node's stream (it was unapproved): its client reads to the
        end, then polls again on the same connection, as tailscaled does."""
        stream = self.streams.pop(node_id)
        self.maps.pop(node_id)
        while await stream.next(10.0) is not None:
            pass
        await self.open(node_id)

    async def disconnect(self, node_id: int) -> None:
        """The client goes away (its connection closes); the node stays, offline."""
        await self.nodes[node_id].conn.close()
        self.streams.pop(node_id, None)
        self.maps.pop(node_id, None)
        state = self.server.state
        assert state is not None
        for _ in range(1000):  # the server notices the closed connection in its own time
            node = state.nodes.get(node_id)
            if node is None or not node.online:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"node {node_id} still online after its connection closed")

    async def come_back(self, node_id: int) -> None:
        """A disconnected client connects again with its machine key and opens a stream."""
        node = self.nodes[node_id]
        node.conn = ControlConnection(machine=node.conn.machine)
        await node.conn.connect("127.0.0.1", self.server.main_port)
        await self.open(node_id)

    async def reregister(self, node_id: int, key: str | None, rotate: bool = True) -> None:
        """The same machine logs in again with another key (new owner or tags).

        ``rotate``: as ``tailscale up --force-reauth --authkey`` does, a new node key
        (OldNodeKey names the old one), then a new map poll. Otherwise the same node key is
        presented again (the server re-authenticates an expired node that way) and the open
        stream carries on."""
        node = self.nodes[node_id]
        extra: dict[str, Any] = {}
        if rotate:
            extra["OldNodeKey"] = node.node_key_text
            node.node_key = X25519PrivateKey.generate()
        resp = await node.register(key, **extra)
        assert resp.get("MachineAuthorized") is self._approved(node_id), resp
        if rotate:
            await self.open(node_id)

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.conn.close()

    async def settle(self) -> None:
        """Wait until the server has delivered every change and each client has read it.

        Once the mapper is idle, a marker goes to the back of every stream's queue; a client
        that has read its marker has read everything sent before it."""
        mapper = self.server.mapper
        assert mapper is not None
        for _ in range(1000):
            if mapper.idle():
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError("the mapper never went idle")
        self._marker += 1
        marker = f"oracle-marker-{self._marker}"
        msg = Message.of({"KeepAlive": True, "ControlTime": marker})
        for node_id in self.streams:
            session = mapper.sessions.get(node_id)
            if session is not None:
                # Straight into the queue: push() drops messages for cut-off (expired) nodes.
                session.queue.append(msg)
                session.wakeup.set()
        await asyncio.gather(*(self._drain(i, marker) for i in list(self.streams)))

    async def _drain(self, node_id: int, marker: str) -> None:
        stream = self.streams[node_id]
        while True:
            msg = await stream.next(10.0)
            if msg is None:  # the server ended the stream (node deleted)
                del self.streams[node_id]
                del self.maps[node_id]
                return
            if msg.get("ControlTime") == marker:
                return
            self.maps[node_id].apply(msg)

    def mismatches(self, now: datetime | None = None) -> dict[int, dict[str, Any]]:
        """Per open stream, the fields whose held value differs from a fresh server's."""
        now = now or utcnow()
        fresh = fresh_maps(self.server)
        mapper = self.server.mapper
        out: dict[int, dict[str, Any]] = {}
        for node_id, held in self.maps.items():
            if node_id not in fresh:
                out[node_id] = {"stream": "open for a node the database no longer has"}
                continue
            want = NetMap()
            want.apply(fresh[node_id])
            a, b = held.view(now), want.view(now)
            session = mapper.sessions.get(node_id) if mapper is not None else None
            if session is not None and session.cut_off:
                # An expired, logged-out or waiting node is cut off: it must hold that it
                # expired or waits and nothing about the tailnet.
                a, b = _cut_off_view(a), _cut_off_view(b)
            diff = {k: {"held": a[k], "fresh": b[k]} for k in a if a[k] != b[k]}
            if diff:
                out[node_id] = _narrow(diff)
        return out

    async def assert_matches_fresh(self) -> None:
        await self.settle()
        bad = self.mismatches()
        assert not bad, json.dumps(bad, indent=1, default=str)[:6000]


def _cut_off_view(view: dict[str, Any]) -> dict[str, Any]:
    node = view["Node"] or {}
    return {"Expired": node.get("Expired"), "MachineAuthorized": node.get("MachineAuthorized"),
            "Peers": view["Peers"],
            "PacketFilter": view["PacketFilter"], "SSHPolicy": view["SSHPolicy"]}


def _narrow(diff: dict[str, Any]) -> dict[str, Any]:
    """Only the differing peers of a Peers difference (readable failure messages)."""
    peers = diff.get("Peers")
    if peers is not None:
        held, fresh = peers["held"], peers["fresh"]
        diff["Peers"] = {
            str(i): {"held": held.get(i), "fresh": fresh.get(i)}
            for i in sorted(set(held) | set(fresh)) if held.get(i) != fresh.get(i)
        }
    return diff
