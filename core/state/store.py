"""The authoritative in-memory state, written through to storage: ``State`` is the whole.

This module holds the nodes: loading them, registration and what clients report (the admin's
changes to them are state/nodeadmin.py). The other parts of State are its base classes, one
concept each (state/base.py says which).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from meshscale.clientinput import repair_stored
from meshscale.clientinput.schema import valid_text
from meshscale.errors import StorageError
from meshscale.state.changes import (
    NodeAdded,
    NodeChanged,
    NodePatched,
    Patch,
    Why,
)
from meshscale.state.models import Node, PreAuthKey, utcnow
from meshscale.state.names import unique_name
from meshscale.state.nodeadmin import NodeAdmin
from meshscale.state.policyview import PolicyHooks
from meshscale.storage.base import (
    Op,
    PutCounter,
    PutKey,
    PutNode,
    Snapshot,
)
from meshscale.tailcfg import peer_hostinfo

log = logging.getLogger(__name__)

__all__ = ["PolicyHooks", "State"]  # PolicyHooks: the server sets it on State


class State(NodeAdmin):
    """The whole state; this part: nodes (load, register, client updates)."""

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
            if n.routable_ips and n.approved:
                self.routes.set_eligible(n.id, self.serving(n))
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
        consumed = replace(key, used=True)
        node = self._register(
            machine_key, node_key, hostinfo, tags, capver,
            user_id=None if tags else key.user_id, auth_key_id=key.id,
            ephemeral=key.ephemeral, method="authkey",
            ops=[] if key.used else [PutKey(consumed)], preapproved=key.preauthorized,
        )
        self.keys[key.id] = consumed
        return node

    def register_for_user(
        self,
        user_id: int | None,
        machine_key: bytes,
        node_key: bytes,
        hostinfo: dict[str, object],
        tags: Sequence[str],
        capver: int,
        method: str,
    ) -> Node:
        """Create a node (or re-authenticate this machine's node) for a login without a key:
        interactive (an admin's command) or a login provider such as OIDC."""
        return self._register(machine_key, node_key, hostinfo, tags, capver,
                              user_id=None if tags else user_id, auth_key_id=None,
                              ephemeral=False, method=method, ops=[])

    def _register(
        self,
        machine_key: bytes,
        node_key: bytes,
        hostinfo: dict[str, object],
        tags: Sequence[str],
        capver: int,
        *,
        user_id: int | None,
        auth_key_id: int | None,
        ephemeral: bool,
        method: str,
        ops: list[Op],
        preapproved: bool = False,
    ) -> Node:
        """``preapproved``: a new node joins approved whatever node.approval says (an existing
        node keeps its state; NodeLifecycle approves it through set_approved)."""
        hostname = str(hostinfo.get("Hostname") or "node")
        existing = self._by_machine_key.get(machine_key)
        if existing is not None:
            node = replace(
                existing,
                node_key=node_key,
                hostname=hostname,
                user_id=user_id,
                tags=tuple(tags),
                hostinfo=dict(hostinfo),
                expiry=self._expiry_for(tags),
                auth_key_id=auth_key_id,
                ephemeral=ephemeral,
                register_method=method,
                capver=capver,
            )
            self._write([*ops, PutNode(node)])
            self._unindex(existing)
            self._index(node)
            others = self._sync_node(node)
            self._emit(NodeChanged(node.id, Why.REAUTH))
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
            auth_key_id=auth_key_id,
            ephemeral=ephemeral,
            register_method=method,
            capver=capver,
            approved=preapproved or self.config.node.approval != "manual",
        )
        try:
            self._write([*ops, PutNode(node), PutCounter("node", node.id)])
        except Exception:
            self.v4.release(node.ipv4)
            self.v6.release(node.ipv6)
            raise
        self._hwm["node"] = node.id
        self._index(node)
        others = self._sync_node(node)
        self._emit(NodeAdded(node.id))
        self._emit_changed(others)
        return node

    def rotate_node_key(self, node: Node, new_key: bytes) -> Node:
        updated = replace(node, node_key=new_key)
        self._write([PutNode(updated)])
        self._replace(node, updated)
        self._emit(NodePatched(updated.id, Patch.KEY))
        return updated

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
        whole: Why | None = None
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
                whole = Why.HOSTINFO
                if node.routable_ips != routes_before:
                    whole = Why.ROUTES_ADVERTISED
                    others = self._sync_node(node)
            elif hostinfo != node.hostinfo:
                # Only fields peers never see moved (NetInfo, mostly): keep them for the self
                # view. An unchanged Hostinfo keeps its object, so the cached PolicyNode stays
                # valid.
                node.hostinfo = dict(hostinfo)
        if whole is not None:
            self._emit(NodeChanged(node.id, whole))
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
        takers = self.routes.set_eligible(node.id, self.serving(node))
        self._emit(NodePatched(node.id, Patch.ONLINE))
        self._emit_changed(takers)
