"""Change events -> per-node deltas -> shared bytes for every affected stream.

Costs follow architecture.md §3: a change costs in proportion to the peers it reaches; a node's
peer JSON is cached and reused by every full map; a delta is serialized (and compressed) once.
Only a new stream, or one that fell too far behind, gets a full map.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshscale import tailcfg
from meshscale.config import Config
from meshscale.events import MapKind, MapSent
from meshscale.mapper.frames import Message, dumps
from meshscale.mapper.session import MapSession
from meshscale.policy import PolicyEngine
from meshscale.state import changes as ch
from meshscale.state.models import Node
from meshscale.state.store import State

log = logging.getLogger(__name__)

# Node attributes every node gets: no captive-portal probes towards tailscale.com, no UPnP.
DEFAULT_CAPS: dict[str, Any] = {
    "disable-captive-portal-detection": None,
    "debug-disable-upnp": None,
}

Notify = Callable[[MapSent], None]


class Mapper:
    def __init__(
        self,
        config: Config,
        state: State,
        engine: PolicyEngine,
        derp_map: Callable[[], Mapping[str, Any]],
        notify: Notify | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.engine = engine
        self.derp_map = derp_map
        self.notify = notify or (lambda _e: None)
        self.sessions: dict[int, MapSession] = {}
        self._peer_json: dict[int, bytes] = {}
        self._dns = tailcfg.dns_config(config)
        self.primary_routes: dict[int, list[str]] = {}
        self._change_started = 0.0  # when the change being fanned out reached us (MapSent)
        state.subscribe(self.on_change)

    # -- sessions --------------------------------------------------------------------------------

    def open(self, node_id: int, compress: bool) -> MapSession:
        old = self.sessions.get(node_id)
        if old is not None:
            old.close()  # one stream per node: the newest wins
        s = MapSession(node_id, compress)
        self.sessions[node_id] = s
        return s

    def close(self, s: MapSession) -> bool:
        """Forget ``s``; True if it was the node's current stream."""
        s.close()
        if self.sessions.get(s.node_id) is s:
            del self.sessions[s.node_id]
            return True
        return False

    def stream_count(self) -> int:
        return len(self.sessions)

    # -- building blocks ---------------------------------------------------------------------------

    def peer_fragment(self, peer: Node, viewer_id: int) -> bytes:
        allowed = self.engine.peer_allowed_ips(viewer_id, self.state.policy_node(peer))
        if allowed is not None:
            return dumps(self._peer_obj(peer, allowed))
        frag = self._peer_json.get(peer.id)
        if frag is None:
            frag = dumps(self._peer_obj(peer, None))
            self._peer_json[peer.id] = frag
        return frag

    def _peer_obj(self, peer: Node, allowed: list[str] | None) -> dict[str, Any]:
        primary = self.primary_routes.get(peer.id, [])
        if allowed is None:
            allowed = [*peer.prefixes, *primary]
        return tailcfg.node_json(peer, self.config, allowed_ips=allowed, primary_routes=primary)

    def self_node(self, node: Node) -> dict[str, Any]:
        caps: dict[str, Any] = dict(DEFAULT_CAPS)
        caps.update(self.engine.cap_map(node.id))
        primary = self.primary_routes.get(node.id, [])
        return tailcfg.node_json(
            node,
            self.config,
            allowed_ips=[*node.prefixes, *primary],
            primary_routes=primary,
            cap_map=caps,
            self_view=True,
        )

    def visible_ids(self, node_id: int) -> Iterable[int] | None:
        return self.engine.visible_peers(node_id)

    def _profiles(self, nodes: Iterable[Node]) -> list[dict[str, Any]]:
        seen: set[int] = set()
        out: list[dict[str, Any]] = []
        tagged = False
        for n in nodes:
            if n.user_id is None:
                tagged = True
                continue
            if n.user_id in seen:
                continue
            seen.add(n.user_id)
            u = self.state.users.get(n.user_id)
            if u is not None:
                out.append(tailcfg.user_profile(u))
        if tagged:
            out.append(dict(tailcfg.TAGGED_USER))
        return out

    def full_map(self, s: MapSession) -> Message:
        """The complete MapResponse for a new (or resynced) stream."""
        node = self.state.nodes.get(s.node_id)
        if node is None:
            raise LookupError(f"node {s.node_id} is gone")
        visible = self.visible_ids(node.id)
        if visible is None:
            peers = [n for i, n in sorted(self.state.nodes.items()) if i != node.id]
            s.known = None
        else:
            ids = sorted(set(visible) - {node.id})
            peers = [self.state.nodes[i] for i in ids if i in self.state.nodes]
            s.known = {p.id for p in peers}
        pf = self.engine.packet_filter(node.id)
        ssh = self.engine.ssh_policy(node.id) or {"rules": []}
        s.filter_json = dumps(pf)
        s.ssh_json = dumps(ssh)
        head = {
            "Node": self.self_node(node),
            "DERPMap": self.derp_map(),
            "Domain": self.config.dns.base_domain or "meshscale",
            "CollectServices": True,
            "DNSConfig": self._dns,
            "PacketFilter": pf,
            "SSHPolicy": ssh,
            "UserProfiles": self._profiles([node, *peers]),
            "ControlTime": tailcfg.gotime(_now()),
            "Debug": {"DisableLogTail": True},
        }
        body = dumps(head)
        # Splice the cached peer fragments in without re-serializing them.
        frags = b",".join(self.peer_fragment(p, node.id) for p in peers)
        if peers:
            body = body[:-1] + b',"Peers":[' + frags + b"]}"
        return Message(body)

    # -- fan-out -----------------------------------------------------------------------------------

    def _viewers(self, node_id: int) -> list[MapSession]:
        visible = self.visible_ids(node_id)
        if visible is None:
            return [s for i, s in self.sessions.items() if i != node_id]
        out = []
        for i in visible:
            if i == node_id:
                continue
            s = self.sessions.get(i)
            if s is not None:
                out.append(s)
        return out

    def _send(self, sessions: Iterable[MapSession], msg: Message) -> None:
        count = 0
        for s in sessions:
            s.push(msg)
            count += 1
        if count:
            seconds = time.monotonic() - self._change_started if self._change_started else 0.0
            self.notify(MapSent(MapKind.DELTA, count, len(msg.frame(True)), seconds))

    def _send_self(self, node_id: int, obj: dict[str, Any]) -> None:
        s = self.sessions.get(node_id)
        if s is not None:
            self._send([s], Message.of(obj))

    def on_change(self, change: ch.Change) -> None:
        self._change_started = time.monotonic()
        try:
            self._on_change(change)
        except Exception:  # a bug here must not break the request that made the change
            log.exception("mapper failed on %r; resyncing all streams", change)
            for s in self.sessions.values():
                s.resync()

    def _on_change(self, change: ch.Change) -> None:
        if isinstance(change, ch.NodePatched):
            self._patched(change)
        elif isinstance(change, (ch.NodeAdded, ch.NodeChanged)):
            self._peer_json.pop(change.node_id, None)
            node = self.state.nodes.get(change.node_id)
            if node is None:
                return
            self._upserted(node, added=isinstance(change, ch.NodeAdded))
        elif isinstance(change, ch.NodeRemoved):
            self._peer_json.pop(change.node_id, None)
            msg = Message.of({"PeersRemoved": [change.node_id]})
            targets = []
            for s in self.sessions.values():
                if s.node_id == change.node_id:
                    continue
                if s.known is not None:
                    if change.node_id not in s.known:
                        continue
                    s.known.discard(change.node_id)
                targets.append(s)
            self._send(targets, msg)
            own = self.sessions.pop(change.node_id, None)
            if own is not None:
                own.close()
        elif isinstance(change, ch.UserChanged):
            u = self.state.users.get(change.user_id)
            if u is not None:
                for n in self.state.user_nodes(u.id):
                    self._peer_json.pop(n.id, None)
                self._send(self.sessions.values(),
                           Message.of({"UserProfiles": [tailcfg.user_profile(u)]}))
        elif isinstance(change, ch.PolicyChanged):
            self.policy_changed(change.affected)
        elif isinstance(change, ch.DerpMapChanged):
            self._send(self.sessions.values(), Message.of({"DERPMap": self.derp_map()}))

    def _patched(self, change: ch.NodePatched) -> None:
        node = self.state.nodes.get(change.node_id)
        if node is None:
            return
        self._peer_json.pop(node.id, None)
        f = change.fields
        patch: dict[str, Any] = {"NodeID": node.id}
        if ch.Patch.ENDPOINTS in f:
            patch["Endpoints"] = list(node.endpoints)
        if ch.Patch.DERP in f:
            patch["DERPRegion"] = node.home_derp
        if ch.Patch.DISCO in f:
            patch["DiscoKey"] = tailcfg.discokey(node.disco_key)
        if ch.Patch.KEY in f:
            patch["Key"] = tailcfg.nodekey(node.node_key)
            patch["DiscoKey"] = tailcfg.discokey(node.disco_key)
        if ch.Patch.KEY in f or ch.Patch.EXPIRY in f:
            patch["KeyExpiry"] = tailcfg.gotime(node.expiry)
        if ch.Patch.ONLINE in f:
            patch["Online"] = node.online
            if node.last_seen is not None:
                patch["LastSeen"] = tailcfg.gotime(node.last_seen)
        self._send(self._viewers(node.id), Message.of({"PeersChangedPatch": [patch]}))
        if ch.Patch.KEY in f or ch.Patch.EXPIRY in f:
            self._send_self(node.id, {"Node": self.self_node(node)})

    def _upserted(self, node: Node, added: bool) -> None:
        profiles = self._profiles([node])
        shared: Message | None = None
        targets: list[MapSession] = []
        for s in self._viewers(node.id):
            if s.known is not None:
                s.known.add(node.id)
            allowed = self.engine.peer_allowed_ips(s.node_id, self.state.policy_node(node))
            if allowed is None:
                targets.append(s)
            else:  # this viewer sees the node's routes differently: its own message
                s.push(Message.of({"PeersChanged": [self._peer_obj(node, allowed)],
                                   "UserProfiles": profiles}))
        if targets:
            frag = self.peer_fragment(node, targets[0].node_id)
            shared = Message(b'{"PeersChanged":[' + frag + b'],"UserProfiles":'
                             + dumps(profiles) + b"}")
            self._send(targets, shared)
        if not added:
            self._send_self(node.id, {"Node": self.self_node(node)})

    def policy_changed(self, affected: Any) -> None:
        """Recompute filter, peers and SSH policy for affected streams; send what differs."""
        sessions = (
            list(self.sessions.values())
            if affected.everyone
            else [self.sessions[i] for i in affected.nodes if i in self.sessions]
        )
        for s in sessions:
            node = self.state.nodes.get(s.node_id)
            if node is None:
                continue
            out: dict[str, Any] = {}
            pf = self.engine.packet_filter(node.id)
            pf_json = dumps(pf)
            if pf_json != s.filter_json:
                out["PacketFilter"] = pf
                s.filter_json = pf_json
            ssh = self.engine.ssh_policy(node.id) or {"rules": []}
            ssh_json = dumps(ssh)
            if ssh_json != s.ssh_json:
                out["SSHPolicy"] = ssh
                s.ssh_json = ssh_json
            visible = self.visible_ids(node.id)
            before = set(self.state.nodes) - {node.id} if s.known is None else s.known
            after = (set(self.state.nodes) if visible is None else set(visible)) - {node.id}
            removed = sorted(before - after)
            added = sorted(i for i in after - before if i in self.state.nodes)
            if removed:
                out["PeersRemoved"] = removed
            if added:
                peers = [self.state.nodes[i] for i in added]
                out["PeersChanged"] = [
                    self._peer_obj(p, self.engine.peer_allowed_ips(node.id,
                                                                    self.state.policy_node(p)))
                    for p in peers
                ]
                out["UserProfiles"] = self._profiles(peers)
            s.known = None if visible is None else after
            if out:
                out["Node"] = self.self_node(node)
                s.push(Message.of(out))


def _now() -> Any:
    from datetime import UTC, datetime  # noqa: PLC0415

    return datetime.now(UTC)


def monotonic() -> float:
    return time.monotonic()
