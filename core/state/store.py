"""The authoritative in-memory state, written through to storage.

Every mutation first computes the new records, writes them to storage in one transaction and only
then changes memory, so a failed write changes nothing. There is no ``await`` inside a mutation:
on one event loop that makes check-and-consume of a single-use key atomic.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from meshscale import auth
from meshscale.clientinput import repair_stored
from meshscale.clientinput.schema import valid_text
from meshscale.config import Config
from meshscale.errors import AuthError, MeshscaleError, NotFoundError, StorageError
from meshscale.policy import Affected, PolicyNode, PolicyUser
from meshscale.state.changes import (
    Change,
    NodeAdded,
    NodeChanged,
    NodePatched,
    NodeRemoved,
    Patch,
    UserChanged,
)
from meshscale.state.ipalloc import IPAllocator
from meshscale.state.models import Node, PreAuthKey, User, utcnow
from meshscale.state.names import sanitize, unique_name
from meshscale.state.routes import RouteTable, effective_approved
from meshscale.storage.base import (
    DeleteKey,
    DeleteNode,
    DeleteUser,
    Op,
    PutCounter,
    PutKey,
    PutNode,
    PutUser,
    Snapshot,
    Storage,
)
from meshscale.tailcfg import peer_hostinfo

log = logging.getLogger(__name__)

Listener = Callable[[Change], None]
USERNAME_MAX = 63


class State:
    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.users: dict[int, User] = {}
        self.keys: dict[int, PreAuthKey] = {}
        self.nodes: dict[int, Node] = {}
        self._by_node_key: dict[bytes, Node] = {}
        self._by_machine_key: dict[bytes, Node] = {}
        self._given_names: set[str] = set()
        self.v4 = IPAllocator(config.prefixes.v4, config.prefixes.allocation)
        self.v6 = IPAllocator(config.prefixes.v6, config.prefixes.allocation)
        self._listeners: list[Listener] = []
        self._hwm: dict[str, int] = {}  # highest ID ever given out, per kind
        self._policy_nodes: dict[int, tuple[Node, dict[str, Any], tuple[str, ...] | None,
                                            PolicyNode]] = {}
        self._policy_listeners: list[Callable[[Affected], None]] = []
        self.policy_engine_hooks: PolicyHooks | None = None
        # Subnet routers and primaries. Approved = admin-approved plus what autoApprovers
        # approve now (``_auto``, recomputed on policy change, never stored: a policy that
        # stops approving a route withdraws it).
        self.routes = RouteTable()
        self._auto: dict[int, tuple[str, ...]] = {}

    # -- start-up and listeners ----------------------------------------------------------------

    def load(self, snap: Snapshot) -> None:
        self._hwm = dict(snap.counters)
        for u in snap.users:
            self.users[u.id] = u
        for k in snap.keys:
            self.keys[k.id] = k
        repaired: list[Node] = []
        for stored in snap.nodes:
            n = self._repair(stored)
            if n is not stored:
                repaired.append(n)
            self._index(n)
        for n in self.nodes_sorted():  # by ID: a fresh election makes the lowest ID primary
            if n.routable_ips:
                self.routes.set_eligible(n.id, n.online and not n.expired())
                self.routes.update(self.policy_node(n))
        if repaired:
            self._write([PutNode(n) for n in repaired])

    def _repair(self, n: Node) -> Node:
        """A stored node whose client-reported values do not fit tailcfg (stored before they
        were checked where they enter) would break every map it is in: drop what does not fit,
        once, and say so. Returns ``n`` itself when nothing had to change."""
        limits = self.config.client_limits
        hostinfo, endpoints, dropped = repair_stored(
            n.hostinfo, n.endpoints, limits.hostinfo_max_bytes, limits.endpoints_max)
        hostname = n.hostname if valid_text(n.hostname) else n.given_name
        if not dropped and hostname == n.hostname:
            return n
        log.warning("node %s (%s): dropped stored client values that do not fit tailcfg: %s",
                    n.id, n.given_name, "; ".join(dropped or ["hostname"]))
        return replace(n, hostinfo=hostinfo, endpoints=endpoints, hostname=hostname)

    def _next_id(self, kind: str, live: dict[int, Any]) -> tuple[int, PutCounter]:
        """A new ID of ``kind``, above every ID ever given out (tailcfg: never reused); the
        caller writes the counter op with the record and then sets ``_hwm[kind]``."""
        new = max(self._hwm.get(kind, 0), max(live, default=0)) + 1
        return new, PutCounter(kind, new)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, change: Change) -> None:
        for listener in self._listeners:
            listener(change)

    def publish(self, change: Change) -> None:
        """Send a change that starts outside state (the policy or DERP map changed) down the
        same path as state's own: to every subscriber, the mapper first."""
        self._emit(change)

    def _write(self, ops: Sequence[Op]) -> None:
        self.storage.apply(ops)

    def _index(self, n: Node) -> None:
        self.nodes[n.id] = n
        self._by_node_key[n.node_key] = n
        self._by_machine_key[n.machine_key] = n
        self._given_names.add(n.given_name)
        self.v4.reserve(n.ipv4)
        self.v6.reserve(n.ipv6)

    def _unindex(self, n: Node) -> None:
        self._policy_nodes.pop(n.id, None)
        self.nodes.pop(n.id, None)
        if self._by_node_key.get(n.node_key) is n:
            del self._by_node_key[n.node_key]
        if self._by_machine_key.get(n.machine_key) is n:
            del self._by_machine_key[n.machine_key]
        self._given_names.discard(n.given_name)
        self.v4.release(n.ipv4)
        self.v6.release(n.ipv6)

    # -- users -----------------------------------------------------------------------------------

    def user(self, ref: str | int) -> User:
        """A user by id or name (``--user`` takes either)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            u = self.users.get(int(ref))
            if u is not None:
                return u
        for u in self.users.values():
            if u.name == ref:
                return u
        raise NotFoundError(f"user {ref!r} not found")

    @staticmethod
    def _check_username(name: str) -> None:
        if not name or len(name) > USERNAME_MAX or any(c.isspace() for c in name):
            raise MeshscaleError(
                f"invalid user name {name!r}: 1-{USERNAME_MAX} characters, no spaces"
            )

    def create_user(self, name: str, display_name: str = "", email: str = "") -> User:
        self._check_username(name)
        if any(u.name == name for u in self.users.values()):
            raise MeshscaleError(f"user {name!r} already exists")
        uid, counter = self._next_id("user", self.users)
        u = User(id=uid, name=name, display_name=display_name, email=email)
        self._write([PutUser(u), counter])
        self._hwm["user"] = uid
        self.users[u.id] = u
        self._notify_policy_user(u)
        return u

    def rename_user(self, ref: str | int, new_name: str) -> User:
        u = self.user(ref)
        self._check_username(new_name)
        if any(o.name == new_name and o.id != u.id for o in self.users.values()):
            raise MeshscaleError(f"user {new_name!r} already exists")
        updated = replace(u, name=new_name)
        self._write([PutUser(updated)])
        self.users[u.id] = updated
        self._notify_policy_user(updated)
        self._emit(UserChanged(u.id))
        return updated

    def delete_user(self, ref: str | int) -> User:
        u = self.user(ref)
        owned = [n.given_name for n in self.nodes.values() if n.user_id == u.id]
        if owned:
            raise MeshscaleError(
                f"user {u.name!r} still has nodes ({', '.join(sorted(owned))}); delete them first"
            )
        keys = [k for k in self.keys.values() if k.user_id == u.id]
        self._write([*(DeleteKey(k.id) for k in keys), DeleteUser(u.id)])
        for k in keys:
            del self.keys[k.id]
        del self.users[u.id]
        if self.policy_engine_hooks:
            self.policy_engine_hooks.user_removed(u.id)
        return u

    # -- pre-auth keys ---------------------------------------------------------------------------

    def create_key(
        self,
        user: User | None,
        reusable: bool = False,
        ephemeral: bool = False,
        expiration: timedelta | None = timedelta(hours=1),
        tags: Sequence[str] = (),
    ) -> tuple[PreAuthKey, str]:
        """Make a key; returns the record and the full key, which is shown once."""
        for tag in tags:
            if not tag.startswith("tag:") or len(tag) <= 4:
                raise MeshscaleError(f"invalid tag {tag!r}: tags look like tag:name")
        if user is None and not tags:
            raise MeshscaleError("a key needs a user or at least one tag")
        full, prefix, secret_hash = auth.new_key()
        now = utcnow()
        key = PreAuthKey(
            id=self._next_id("key", self.keys)[0],
            prefix=prefix,
            secret_hash=secret_hash,
            user_id=user.id if user else None,
            reusable=reusable,
            ephemeral=ephemeral,
            expiration=now + expiration if expiration else None,
            created_at=now,
            tags=tuple(sorted(set(tags))),
        )
        self._write([PutKey(key), PutCounter("key", key.id)])
        self._hwm["key"] = key.id
        self.keys[key.id] = key
        return key, full

    def expire_key(self, ref: str | int) -> PreAuthKey:
        key = self.find_key(ref)
        updated = replace(key, expiration=utcnow())
        self._write([PutKey(updated)])
        self.keys[key.id] = updated
        return updated

    def find_key(self, ref: str | int) -> PreAuthKey:
        """A key by id, prefix, or the full key (whose secret must then match)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            k = self.keys.get(int(ref))
            if k is not None:
                return k
        text = str(ref)
        parts = auth.split_key(text)
        prefix = parts[0] if parts else text
        for k in self.keys.values():
            if k.prefix == prefix:
                if parts and not auth.secret_matches(parts[1], k.secret_hash):
                    break
                return k
        raise NotFoundError(f"pre-auth key {text[:24]!r} not found")

    def check_auth_key(self, text: str) -> PreAuthKey:
        """The key a client presents: it must exist, match, be unexpired and unused."""
        parts = auth.split_key(text)
        if parts is None:
            raise AuthError("invalid pre-auth key")
        prefix, secret = parts
        key = next((k for k in self.keys.values() if k.prefix == prefix), None)
        # Compare even when the prefix is unknown, so timing does not tell which part was wrong.
        stored = key.secret_hash if key else b"\x00" * 32
        if not auth.secret_matches(secret, stored) or key is None:
            raise AuthError("invalid pre-auth key")
        if key.expired():
            raise AuthError("pre-auth key expired")
        if key.used and not key.reusable:
            raise AuthError("pre-auth key already used")
        return key

    # -- nodes: lookups --------------------------------------------------------------------------

    def by_node_key(self, key: bytes) -> Node | None:
        return self._by_node_key.get(key)

    def by_machine_key(self, key: bytes) -> Node | None:
        return self._by_machine_key.get(key)

    def node(self, node_id: int) -> Node:
        n = self.nodes.get(node_id)
        if n is None:
            raise NotFoundError(f"node {node_id} not found")
        return n

    def owner_name(self, node: Node) -> str | None:
        u = self.users.get(node.user_id) if node.user_id is not None else None
        return u.name if u else None

    # -- nodes: registration ---------------------------------------------------------------------

    def _expiry_for(self, tags: Sequence[str]) -> datetime | None:
        # Tagged nodes do not expire (as in Tailscale); others per node.expiry (0: never).
        if tags or not self.config.node.expiry:
            return None
        return utcnow() + timedelta(seconds=float(self.config.node.expiry))

    def register_with_key(
        self,
        key: PreAuthKey,
        machine_key: bytes,
        node_key: bytes,
        hostinfo: dict[str, object],
        tags: Sequence[str],
        capver: int,
    ) -> Node:
        """Create a node (or re-authenticate this machine's node) and consume ``key``."""
        hostname = str(hostinfo.get("Hostname") or "node")
        existing = self._by_machine_key.get(machine_key)
        ops: list[Op] = []
        consumed = replace(key, used=True)
        if not key.used:
            ops.append(PutKey(consumed))
        user_id = None if tags else key.user_id
        if existing is not None:
            node = replace(
                existing,
                node_key=node_key,
                hostname=hostname,
                user_id=user_id,
                tags=tuple(tags),
                hostinfo=dict(hostinfo),
                expiry=self._expiry_for(tags),
                auth_key_id=key.id,
                ephemeral=key.ephemeral,
                register_method="authkey",
                capver=capver,
            )
            self._write([*ops, PutNode(node)])
            self.keys[key.id] = consumed
            self._unindex(existing)
            self._index(node)
            others = self._sync_node(node)
            self._emit(NodeChanged(node.id))
            self._emit_changed(others)
            return node
        node = Node(
            id=self._next_id("node", self.nodes)[0],
            machine_key=machine_key,
            node_key=node_key,
            hostname=hostname,
            given_name=unique_name(hostname, self._given_names),
            user_id=user_id,
            ipv4=self.v4.allocate(),
            ipv6=self.v6.allocate(),
            tags=tuple(tags),
            hostinfo=dict(hostinfo),
            expiry=self._expiry_for(tags),
            auth_key_id=key.id,
            ephemeral=key.ephemeral,
            capver=capver,
        )
        try:
            self._write([*ops, PutNode(node), PutCounter("node", node.id)])
        except Exception:
            self.v4.release(node.ipv4)
            self.v6.release(node.ipv6)
            raise
        self._hwm["node"] = node.id
        self.keys[key.id] = consumed
        self._index(node)
        others = self._sync_node(node)
        self._emit(NodeAdded(node.id))
        self._emit_changed(others)
        return node

    def rotate_node_key(self, node: Node, new_key: bytes) -> Node:
        updated = replace(node, node_key=new_key)
        self._write([PutNode(updated)])
        self._unindex(node)
        self._index(updated)
        updated.online = node.online
        self._emit(NodePatched(updated.id, Patch.KEY))
        return updated

    # -- nodes: admin ----------------------------------------------------------------------------

    def delete_node(self, node_id: int) -> Node:
        n = self.node(node_id)
        self._write([DeleteNode(n.id)])
        self._unindex(n)
        self._auto.pop(n.id, None)
        if self.policy_engine_hooks:
            self.policy_engine_hooks.node_removed(n.id)
        takers = self.routes.remove(n.id)  # failover: the next router becomes primary
        self._emit(NodeRemoved(n.id))
        self._emit_changed(takers)
        return n

    def set_approved_routes(self, node_id: int, routes: Sequence[str]) -> Node:
        """Replace the node's admin-approved routes (``nodes approve-routes``)."""
        n = self.node(node_id)
        clean: list[str] = []
        for r in routes:
            try:
                prefix = str(ipaddress.ip_network(r.strip(), strict=True))
            except ValueError as exc:
                raise MeshscaleError(f"invalid route {r!r}: {exc}") from None
            if prefix not in clean:
                clean.append(prefix)
        n2 = replace(n, approved_routes=tuple(clean))
        self._write([PutNode(n2)])
        self._replace(n, n2)
        others = self._sync_node(n2)
        self._emit(NodeChanged(n2.id))
        self._emit_changed(others)
        return n2

    def expire_node(self, node_id: int, when: datetime | None = None) -> Node:
        n = self.node(node_id)
        n2 = replace(n, expiry=when or utcnow())
        self._write([PutNode(n2)])
        self._replace(n, n2)
        takers = self.routes.set_eligible(n2.id, n2.online and not n2.expired())
        self._emit(NodePatched(n.id, Patch.EXPIRY))
        self._emit_changed(takers)
        return n2

    def rename_node(self, node_id: int, new_name: str) -> Node:
        n = self.node(node_id)
        clean = sanitize(new_name)
        if clean != new_name:
            raise MeshscaleError(
                f"invalid name {new_name!r}: use lower-case letters, digits and '-' ({clean!r})"
            )
        if clean in self._given_names and clean != n.given_name:
            raise MeshscaleError(f"name {clean!r} is already taken")
        n2 = replace(n, given_name=clean)
        self._write([PutNode(n2)])
        self._replace(n, n2)
        self._emit(NodeChanged(n.id))
        return n2

    def _replace(self, old: Node, new: Node) -> None:
        new.online = old.online
        self._unindex(old)
        self._index(new)

    # -- nodes: what clients report (hot path: no storage writes for endpoint churn) ----------

    def client_update(
        self,
        node: Node,
        endpoints: Sequence[str] | None,
        disco_key: bytes | None,
        hostinfo: dict[str, object] | None,
    ) -> None:
        """Apply a map request's Endpoints/DiscoKey/Hostinfo; emit the smallest change.
        A refused write (StorageError) leaves the node as it was."""
        before = (node.endpoints, node.disco_key, node.home_derp, node.hostinfo, node.hostname)
        fields = Patch.NONE
        whole = False
        others: set[int] = set()
        if endpoints is not None and tuple(endpoints) != node.endpoints:
            node.endpoints = tuple(endpoints)
            fields |= Patch.ENDPOINTS
        if disco_key and disco_key != node.disco_key and any(disco_key):
            node.disco_key = disco_key
            fields |= Patch.DISCO
        if hostinfo is not None:
            netinfo = hostinfo.get("NetInfo")
            derp = netinfo.get("PreferredDERP", 0) if isinstance(netinfo, dict) else 0
            if isinstance(derp, int) and derp and derp != node.home_derp:
                node.home_derp = derp
                fields |= Patch.DERP
            if peer_hostinfo(hostinfo) != peer_hostinfo(node.hostinfo):
                routes_before = node.routable_ips
                node.hostinfo = dict(hostinfo)
                if hostinfo.get("Hostname") and hostinfo["Hostname"] != node.hostname:
                    node.hostname = str(hostinfo["Hostname"])
                try:
                    self._write([PutNode(node)])
                except StorageError:
                    (node.endpoints, node.disco_key, node.home_derp, node.hostinfo,
                     node.hostname) = before
                    raise
                whole = True
                if node.routable_ips != routes_before:
                    others = self._sync_node(node)
            elif hostinfo != node.hostinfo:
                # Only fields peers never see moved (NetInfo, mostly): keep them for the self
                # view. An unchanged Hostinfo keeps its object, so the cached PolicyNode stays
                # valid.
                node.hostinfo = dict(hostinfo)
        if whole:
            self._emit(NodeChanged(node.id))
            self._emit_changed(others)
        elif fields:
            self._emit(NodePatched(node.id, fields))

    def set_online(self, node: Node, online: bool) -> None:
        if node.online == online:
            return
        node.online = online
        node.last_seen = utcnow()
        if not online:
            # One write per disconnect keeps last-seen across restarts without write churn.
            # The node is gone either way: if the database refuses, only last-seen is lost.
            try:
                self._write([PutNode(node)])
            except StorageError as exc:
                log.warning("node %d went offline; its last-seen time was not stored: %s",
                            node.id, exc)
        # Subnet routes fail over to (or from) this router.
        takers = self.routes.set_eligible(node.id, online and not node.expired())
        self._emit(NodePatched(node.id, Patch.ONLINE))
        self._emit_changed(takers)

    # -- policy bridge -------------------------------------------------------------------------

    def policy_user(self, u: User) -> PolicyUser:
        return PolicyUser(id=u.id, name=u.name, email=u.email)

    def policy_node(self, n: Node) -> PolicyNode:
        """The node as policy sees it; approved routes include the auto-approved ones.

        Cached: a full map asks this for every peer. An entry is valid while it was built from
        this very Node object (changes replace the object) with the same Hostinfo object and
        the same auto-approvals (both are reassigned, never mutated, when they change).
        """
        auto = self._auto.get(n.id)
        cached = self._policy_nodes.get(n.id)
        if cached is not None and cached[0] is n and cached[1] is n.hostinfo and cached[2] is auto:
            return cached[3]
        node = self._admin_policy_node(n)
        if auto:
            node = replace(node, approved_routes=effective_approved(node, auto))
        self._policy_nodes[n.id] = (n, n.hostinfo, auto, node)
        return node

    @staticmethod
    def _admin_policy_node(n: Node) -> PolicyNode:
        return PolicyNode(
            id=n.id,
            hostname=n.given_name,
            user_id=n.user_id,
            tags=frozenset(n.tags),
            ipv4=n.ipv4,
            ipv6=n.ipv6,
            routable_ips=n.routable_ips,
            approved_routes=n.approved_routes,
        )

    def _auto_approve(self, n: Node) -> bool:
        """Recompute what autoApprovers approve for ``n``; True if that changed."""
        hooks = self.policy_engine_hooks
        auto: tuple[str, ...] = ()
        if hooks is not None and hooks.auto_routes is not None and n.routable_ips:
            auto = tuple(hooks.auto_routes(self._admin_policy_node(n)))
        if auto == self._auto.get(n.id, ()):
            return False
        if auto:
            self._auto[n.id] = auto
        else:
            self._auto.pop(n.id, None)
        return True

    def _sync_node(self, n: Node) -> set[int]:
        """Tell policy and the route table that ``n`` changed in a way policy sees (tags,
        owner, advertised or approved routes). Returns the other nodes whose routes changed
        (a new primary); the caller emits ``n``'s own change."""
        self._auto_approve(n)
        node = self.policy_node(n)
        if self.policy_engine_hooks:
            self.policy_engine_hooks.node_upserted(node)
        moved = self.routes.set_eligible(n.id, n.online and not n.expired())
        return (moved | self.routes.update(node)) - {n.id}

    def refresh_auto_approvals(self) -> None:
        """After a policy change: re-decide autoApprovers for every node advertising routes;
        nodes whose routes changed go to policy, the route table and their peers."""
        changed: set[int] = set()
        for n in self.nodes_sorted():
            if not n.routable_ips and n.id not in self._auto:
                continue
            if self._auto_approve(n):
                node = self.policy_node(n)
                if self.policy_engine_hooks:
                    self.policy_engine_hooks.node_upserted(node)
                changed |= self.routes.update(node)
        self._emit_changed(changed)

    def _emit_changed(self, ids: Iterable[int]) -> None:
        for i in sorted(ids):
            if i in self.nodes:
                self._emit(NodeChanged(i))

    def policy_topology(self) -> tuple[list[PolicyUser], list[PolicyNode]]:
        return (
            [self.policy_user(u) for u in self.users.values()],
            [self.policy_node(n) for n in self.nodes.values()],
        )

    def _notify_policy_user(self, u: User) -> None:
        if self.policy_engine_hooks:
            self.policy_engine_hooks.user_upserted(self.policy_user(u))
            # autoApprovers may name the user: their routers' approvals may change.
            changed: set[int] = set()
            for n in list(self.user_nodes(u.id)):
                if n.routable_ips and self._auto_approve(n):
                    node = self.policy_node(n)
                    self.policy_engine_hooks.node_upserted(node)
                    changed |= self.routes.update(node)
            self._emit_changed(changed)

    # -- queries -----------------------------------------------------------------------------------

    def nodes_sorted(self) -> list[Node]:
        return [self.nodes[i] for i in sorted(self.nodes)]

    def user_nodes(self, user_id: int) -> Iterable[Node]:
        return (n for n in self.nodes.values() if n.user_id == user_id)


class PolicyHooks:
    """How state tells the policy side about topology changes (set by the server)."""

    def __init__(
        self,
        node_upserted: Callable[[PolicyNode], None],
        node_removed: Callable[[int], None],
        user_upserted: Callable[[PolicyUser], None],
        user_removed: Callable[[int], None],
        auto_routes: Callable[[PolicyNode], Sequence[str]] | None = None,
    ) -> None:
        self.node_upserted = node_upserted
        self.node_removed = node_removed
        self.user_upserted = user_upserted
        self.user_removed = user_removed
        self.auto_routes = auto_routes  # autoApprovers: which advertised routes are approved

