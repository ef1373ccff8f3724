"""The map builder: a node's full MapResponse and the pieces deltas reuse, from state and policy.

No I/O and no event loop: it reads state, the policy engine and its caches and returns bytes,
keeping each stream's view for later diffs; it holds no streams and schedules nothing (the
event-loop batching and fan-out are meshscale.mapper.mapper's).
A node's peer JSON is built once and shared by every map; full maps splice cached, compressed
chunks of peers (architecture.md §3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import orjson

from meshscale import bitset, tailcfg
from meshscale.config import Config
from meshscale.dns.model import DnsConfig
from meshscale.mapper import frames, wire
from meshscale.mapper.dnspart import DnsPart
from meshscale.mapper.frames import COMMA, ChunkCache, FramedMessage, Message, compress, dumps
from meshscale.mapper.session import MapSession
from meshscale.mapper.uniform import UniformPeers
from meshscale.policy import PolicyEngine
from meshscale.state import changes as ch
from meshscale.state.models import Node, utcnow
from meshscale.state.store import State

# Node attributes every node gets: no captive-portal probes towards tailscale.com, no UPnP; and
# Tailscale SSH switched on as Tailscale's control plane does for every node of every tailnet
# (all 7771 nodes of the policy conformance captures hold these three; headscale sends cap/ssh
# too). Whether anyone may connect is the SSHPolicy's business; without cap/ssh the client
# refuses `tailscale up --ssh`, and without ssh-env-vars it ignores a rule's acceptEnv.
DEFAULT_CAPS: dict[str, Any] = {
    "disable-captive-portal-detection": None,
    "debug-disable-upnp": None,
    "https://tailscale.com/cap/ssh": None,
    "ssh-behavior-v1": None,
    "ssh-env-vars": None,
}



def config_caps(config: Config) -> dict[str, Any]:
    """Self-node capabilities the config switches, as headscale's config does (taildrop,
    auto_update, randomize_client_port)."""
    caps: dict[str, Any] = {"default-auto-update": [config.auto_update.enabled]}
    if config.taildrop.enabled:
        caps["https://tailscale.com/cap/file-sharing"] = []
    if config.randomize_client_port:
        caps["randomize-client-port"] = None
    return caps


# How one viewer sees one peer, beyond what every viewer sees: AllowedIPs decided by policy
# (None: the peer's addresses) and the subnet routes it reaches through that peer.
Sig = tuple[tuple[str, ...] | None, tuple[str, ...]]
DEFAULT_SIG: Sig = (None, ())
CLOSING = (b"]}", compress(b"]}"))


@dataclass
class _StreamView:
    """What one stream's client holds beyond the shared peer JSON (for diffs on change)."""

    peers: dict[int, Sig] = field(default_factory=dict)  # only peers seen non-default
    self_sig: bytes = b""


def cut_off(node: Node) -> bool:
    """The node gets a map without peers or rules: its key expired (or it logged out), or it
    waits for an admin's approval."""
    return not node.approved or node.expired()


class MapBuilder:
    """Builds full maps and the peer and self-node JSON deltas reuse."""

    def __init__(
        self,
        config: Config,
        state: State,
        engine: PolicyEngine,
        derp_map: Callable[[], Mapping[str, Any]],
        dns: Callable[[], DnsConfig] | None = None,
    ) -> None:
        # DNS settings change at run time (meshscale.dns.settings); the config's by default.
        self.dns = DnsPart(config, dns or (lambda: config.dns))
        self.config = self.dns.config
        self.state = state
        self.engine = engine
        self.derp_map = derp_map
        self._peer_json: dict[int, bytes] = {}
        self._variants: dict[int, dict[Sig, bytes]] = {}  # per-viewer forms of routers' JSON
        self._views: WeakKeyDictionary[MapSession, _StreamView] = WeakKeyDictionary()
        # Policy CapMap per node as last seen: a change can change how peers see the node
        # (disable-ipv4), so policy changes compare against it.
        self._caps: dict[int, bytes] = {i: self._caps_json(i) for i in state.nodes}
        self._chunks = ChunkCache()
        # Bumped whenever a node in the chunk's ID range changes (see _forget).
        self._chunk_versions: defaultdict[int, int] = defaultdict(int)
        self._sub_versions: defaultdict[int, int] = defaultdict(int)  # the same, per sub-chunk
        self._live: int | None = None  # bitset of every node ID (see live_bits)
        self._engine_bits = getattr(engine, "visible_peer_bits", None)
        # Bit positions of every bitset here: the engine's when it gives bitsets (its class
        # ints use them), else our own.
        self.slots: bitset.Slots = getattr(engine, "node_slots", None) or bitset.Slots()
        self._engine_filter = getattr(engine, "packet_filter_json", None)
        self._uniform = UniformPeers(self._chunks, self._chunk_versions, self._sub_versions)
        # Numbers the messages handed to deliver(): a full map covers every one handed over
        # before it was built (MapSession.synced), whenever it is pushed.
        self.delivery_seq = 0
        state.subscribe(self._membership)

    def deliver(self, sessions: Sequence[MapSession], msg: Message) -> None:
        """Hand ``msg`` to each stream (the mapper pushes in slices: mapper.py)."""
        for s in sessions:
            s.push(msg)

    def _membership(self, change: ch.Change) -> None:
        if not isinstance(change, ch.NodePatched):
            self._uniform.changed()  # nodes came or went, or users or nodes changed

    # -- building blocks ---------------------------------------------------------------------------

    def dns_changed(self, sessions: list[MapSession]) -> list[tuple[MapSession, Message | None]]:
        """New DNS settings: what each stream needs, its DNSConfig or (None) a full map."""
        renamed = self.dns.refresh()
        self.config = self.dns.config
        if renamed:
            self._forget_all()
        if renamed is None:
            return []
        nodes = self.state.nodes
        return [(s, None if renamed or s.node_id not in nodes else
                 self.dns.message(nodes[s.node_id])) for s in sessions]

    def _forget_all(self) -> None:
        """Every node's cached JSON is stale (a new base domain renames them all)."""
        for node_id in list(self.state.nodes):
            self._forget(node_id)

    @property
    def primary_routes(self) -> Mapping[int, list[str]]:
        """node id -> the subnet prefixes it is the elected primary for."""
        return self.state.routes.primaries

    def peer_sig(self, peer: Node, viewer_id: int) -> Sig:
        """How ``viewer`` sees ``peer`` (as policytool computes it): AllowedIPs from policy and
        the subnet routes the viewer may use through this peer (primary or ``via`` router)."""
        allowed = self.engine.peer_allowed_ips(viewer_id, self.state.policy_node(peer))
        routes: tuple[str, ...] = ()
        if peer.id in self.state.routes.subnets:  # routers only: the common peer costs nothing
            routes = tuple(self.state.routes.routes_for(self.engine, viewer_id, peer.id))
        return (None if allowed is None else tuple(allowed), routes)

    def _fragment(self, peer: Node, sig: Sig) -> bytes:
        """The peer's JSON for one view; built once and shared by every viewer with it."""
        if sig == DEFAULT_SIG:
            frag = self._peer_json.get(peer.id)
            if frag is None:
                frag = self._peer_json[peer.id] = dumps(self._peer_obj(peer, sig))
            return frag
        variants = self._variants.setdefault(peer.id, {})
        frag = variants.get(sig)
        if frag is None:
            frag = variants[sig] = dumps(self._peer_obj(peer, sig))
        return frag

    def _default_fragment(self, peer: Node) -> bytes:
        return self._fragment(peer, DEFAULT_SIG)

    def _forget(self, node_id: int) -> None:
        self._peer_json.pop(node_id, None)
        self._variants.pop(node_id, None)
        self._chunk_versions[node_id // ChunkCache.CHUNK] += 1
        self._sub_versions[node_id // UniformPeers.SUB] += 1

    def _peer_obj(self, peer: Node, sig: Sig) -> dict[str, Any]:
        allowed, routes = sig
        base = list(allowed) if allowed is not None else peer.prefixes
        # Exit routes go to every viewer: they are used only when the client picks the node.
        extra = [r for r in (*routes, *self.state.routes.exits.get(peer.id, ())) if r not in base]
        return wire.node_json(peer, self.config, allowed_ips=base + extra,
                                 primary_routes=list(routes))

    def _caps_json(self, node_id: int) -> bytes:
        return dumps(dict(sorted(self.engine.cap_map(node_id).items())))

    def self_node(self, node: Node) -> dict[str, Any]:
        caps: dict[str, Any] = {**DEFAULT_CAPS, **config_caps(self.config)}
        caps.update(self.engine.cap_map(node.id))
        primary = self.primary_routes.get(node.id, [])
        exits = list(self.state.routes.exits.get(node.id, ()))
        return wire.node_json(
            node,
            self.config,
            allowed_ips=[*node.prefixes, *primary, *exits],
            primary_routes=primary,
            cap_map=caps,
            self_view=True,
        )

    def _self_sig(self, node: Node) -> bytes:
        """What policy and routes put into the self node: a change means a new ``Node``."""
        return dumps([self._caps_json(node.id).decode(), self.primary_routes.get(node.id, []),
                      list(self.state.routes.exits.get(node.id, ()))])

    def _view(self, s: MapSession) -> _StreamView:
        view = self._views.get(s)
        if view is None:
            view = self._views[s] = _StreamView()
        return view

    def _record(self, s: MapSession, peer_id: int, sig: Sig) -> None:
        peers = self._view(s).peers
        if sig == DEFAULT_SIG:
            peers.pop(peer_id, None)
        else:
            peers[peer_id] = sig

    def policy_json(self, node_id: int) -> tuple[bytes, bytes, bytes, bytes]:
        """The node's PacketFilter and SSHPolicy as JSON, each with the digest a stream keeps
        of it. An engine with ``packet_filter_json`` renders the filter from shared parts."""
        if self._engine_filter is not None:
            pf_json, pf_digest = self._engine_filter(node_id)
        else:
            pf_json = dumps(self.engine.packet_filter(node_id))
            pf_digest = frames.digest(pf_json)
        ssh_json = dumps(self.engine.ssh_policy(node_id) or {"rules": []})
        return pf_json, pf_digest, ssh_json, frames.digest(ssh_json)

    def visible_bits(self, node_id: int) -> int | None:
        """The node's visible peers as a bitset (None: every node). It may hold the node
        itself; from an engine with ``visible_peer_bits`` it is the int shared by the node's
        whole class, so a stream keeping it as ``known`` costs nothing more."""
        if self._engine_bits is not None:
            bits: int | None = self._engine_bits(node_id)
            return bits
        ids = self.engine.visible_peers(node_id)
        return None if ids is None else self.slots.of(ids)

    def visible_ids(self, node_id: int) -> Iterable[int] | None:
        bits = self.visible_bits(node_id)
        return None if bits is None else self.slots.ids(bits)

    def live_bits(self) -> int:
        """Every node ID but those awaiting approval, as a bitset; dropped by the mapper when
        a node joins, leaves or is approved."""
        if self._live is None:
            pending = self.state.pending
            self._live = self.slots.of(self.state.nodes.keys() - pending if pending
                                       else self.state.nodes)
        return self._live

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
                out.append(wire.user_profile(u))
        if tagged:
            out.append(dict(tailcfg.TAGGED_USER))
        return out

    @staticmethod
    def _patch_of(node: Node, f: ch.Patch) -> dict[str, Any]:
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
        return patch

    def full_map(self, s: MapSession) -> Message:
        """The complete MapResponse for a new (or resynced) stream."""
        node = self.state.nodes.get(s.node_id)
        if node is None:
            raise LookupError(f"node {s.node_id} is gone")
        visible = self.visible_bits(node.id)
        s.synced = self.delivery_seq
        s.cut_off = cut_off(node)
        s.slots = self.slots
        pending = self.state.pending  # nodes awaiting approval are nobody's peers
        # Every viewer sees every peer the same way: the peer list comes from cached chunks
        # (mapper/uniform.py), with no per-peer work (at 10,000 nodes that work is most of a
        # full map). Not while a node awaits approval: it must be left out of every list.
        uniform = (not s.cut_off and visible is None and not pending
                   and not self.state.routes.subnets and self.engine.uniform_peer_view())
        if s.cut_off:
            # An expired or logged-out node learns that its key expired (self node's KeyExpiry
            # in the past, Expired), one awaiting approval that it is not authorized
            # (MachineAuthorized false), and nothing about the tailnet: no peers, no rules.
            peers: list[Node] = []
            s.known = 0
        elif uniform:
            peers = []  # not listed: UniformPeers lays them out
            s.known = None
        elif visible is None:
            peers = [n for i, n in sorted(self.state.nodes.items())
                     if i != node.id and i not in pending]
            s.known = None
        else:
            nodes = self.state.nodes
            peers = [nodes[i] for i in self.slots.ids(visible) if i != node.id and i in nodes
                     and i not in pending]
            s.known = visible  # shared with the node's class; its own bit is ignored
        if s.cut_off:
            pf_json, s.filter_digest = b"[]", frames.digest(b"[]")
            ssh_json, s.ssh_digest = b'{"rules":[]}', frames.digest(b'{"rules":[]}')
        else:
            pf_json, s.filter_digest, ssh_json, s.ssh_digest = self.policy_json(node.id)
        view = self._views[s] = _StreamView(self_sig=self._self_sig(node))
        frags = []
        for p in peers:
            sig = self.peer_sig(p, node.id)
            if sig != DEFAULT_SIG:
                view.peers[p.id] = sig
            frags.append(self._fragment(p, sig))
        has_peers = bool(peers) or (uniform and len(self.state.nodes) > 1)
        head = {
            "Node": self.self_node(node),
            "DERPMap": self.derp_map(),
            "Domain": self.config.dns.base_domain or "meshscale",
            "CollectServices": True,
            "DNSConfig": self.dns.for_node(node),
            "PacketFilter": orjson.Fragment(pf_json),
            "SSHPolicy": orjson.Fragment(ssh_json),
            "UserProfiles": (self._uniform.profiles(self.state.nodes, self.state.users, node)
                             if uniform else self._profiles([node, *peers])),
            "ControlTime": tailcfg.gotime(utcnow()),
            "Debug": {"DisableLogTail": not self.config.logtail.enabled},
        }
        if not has_peers and s.sent["full"]:
            # A resync leaving the client no peers (cut off, or a policy that hides everyone)
            # must name the ones it holds: the Go client reads an empty Peers as "unchanged"
            # (tailcfg.MapResponse.Peers) and would keep them all. What it holds is not
            # exactly known (deltas are dropped while a stream is cut off or awaits a full
            # map, deletions too), and IDs are never reused: every ID given out so far.
            head["PeersRemoved"] = [i for i in range(1, self.state.highest_node_id() + 1)
                                    if i != node.id]
        body = dumps(head)
        if not has_peers:
            return Message(body)
        # The peer list is most of a full map and nearly the same for every stream: splice in
        # cached, already compressed chunks of peer fragments instead of serializing and
        # compressing megabytes per stream (architecture.md §3: serialize once, send many).
        opening = body[:-1] + b',"Peers":['
        parts: list[tuple[bytes, bytes]] = [(opening, compress(opening))]
        if uniform:
            parts += self._uniform.parts(self.state.nodes, node.id, self._default_fragment)
        step = ChunkCache.CHUNK
        start = 0
        while start < len(peers):
            index = peers[start].id // step
            end = start
            while end < len(peers) and peers[end].id // step == index:
                end += 1
            if len(parts) > 1:
                parts.append(COMMA)
            # The chunk holding the viewer itself lacks it: compress it, but do not cache it.
            own = index == node.id // step
            parts.append(self._chunks.get(tuple(frags[start:end]), not own))
            start = end
        parts.append(CLOSING)
        return FramedMessage(parts)
