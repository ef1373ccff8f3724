"""The admin's changes to nodes (the CLI's and the API's ``nodes ...`` commands): delete,
approve, routes, addresses, tags, expiry, name. The nodes part of State after the accounts;
registration and what clients report are ``state/store.py``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from meshscale.errors import MeshscaleError
from meshscale.state.accounts import Accounts
from meshscale.state.changes import NodeChanged, NodePatched, NodeRemoved, Patch, Why
from meshscale.state.models import Node, utcnow
from meshscale.state.names import sanitize
from meshscale.storage.base import DeleteNode, PutNode


class NodeAdmin(Accounts):
    """Admin changes to nodes, each written to storage before memory changes."""

    def delete_node(self, node_id: int) -> Node:
        n = self.node(node_id)
        self._write([DeleteNode(n.id)])
        self._unindex(n)
        self._emit_changed(self._leave_tailnet(n))
        return n

    def _leave_tailnet(self, n: Node) -> set[int]:
        """Policy and the route table forget ``n`` and its peers drop it (NodeRemoved: the
        mapper sends PeersRemoved and ends its stream). Returns the routers that took its
        routes over (failover), for the caller to emit."""
        self._auto.pop(n.id, None)
        if self.policy_engine_hooks:
            self.policy_engine_hooks.node_removed(n.id)
        takers = self.routes.remove(n.id)  # failover: the next router becomes primary
        self._emit(NodeRemoved(n.id))
        return takers

    def set_approved(self, node_id: int, approved: bool) -> Node:
        """Device approval. Approved, a waiting node joins the tailnet: peers see it, it sees
        them. Unapproved (Tailscale's ``authorized: false``), an approved node leaves it as a
        deleted one does (a router's routes fail over) and waits as a new node under
        ``node.approval: manual`` does: its next map has no peers and no rules."""
        n = self.node(node_id)
        if n.approved == approved:
            now = "is already approved" if approved else "already waits for approval"
            raise MeshscaleError(f"node {n.id} ({n.given_name}) {now}")
        n2 = replace(n, approved=approved)
        self._write([PutNode(n2)])
        self._replace(n, n2)
        if approved:
            others = self._sync_node(n2)
            self._emit(NodeChanged(n2.id, Why.APPROVED))
        else:
            others = self._leave_tailnet(n2)
        self._emit_changed(others)
        return n2

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
        self._emit(NodeChanged(n2.id, Why.ROUTES_APPROVED))
        self._emit_changed(others)
        return n2

    def backfill_addresses(self) -> list[tuple[Node, list[str]]]:
        """Give every node missing an IPv4 or IPv6 address one (``nodes backfillips``; nodes
        imported from a headscale that had one family only). Returns each node changed with
        the addresses it got."""
        out = []
        for n in self.nodes_sorted():
            if n.ipv4 and n.ipv6:
                continue
            n2 = replace(n, ipv4=n.ipv4 or self.v4.allocate(), ipv6=n.ipv6 or self.v6.allocate())
            self._write([PutNode(n2)])
            self._replace(n, n2)
            others = self._sync_node(n2)
            self._emit(NodeChanged(n2.id))
            self._emit_changed(others)
            out.append((n2, [a for a in n2.addresses if a not in n.addresses]))
        return out

    def set_tags(self, node_id: int, tags: Sequence[str]) -> Node:
        """Replace the node's tags (``nodes tag``, set by an admin, as headscale's forced tags)."""
        n = self.node(node_id)
        clean = tuple(sorted({t.strip() for t in tags if t.strip()}))
        for tag in clean:
            if not tag.startswith("tag:") or len(tag) <= 4:
                raise MeshscaleError(f"invalid tag {tag!r}: tags look like tag:name")
        if not clean and n.user_id is None:
            raise MeshscaleError(f"node {n.given_name!r} has no user: it needs at least one tag")
        n2 = replace(n, tags=clean)
        self._write([PutNode(n2)])
        self._replace(n, n2)
        others = self._sync_node(n2)
        self._emit(NodeChanged(n2.id))
        self._emit_changed(others)
        return n2

    def expire_node(self, node_id: int, when: datetime | None = None,
                    never: bool = False) -> Node:
        """Expire the node's key at ``when`` (default now), or ``never`` (``nodes expire
        --disable``)."""
        n = self.node(node_id)
        n2 = replace(n, expiry=None if never else when or utcnow())
        self._write([PutNode(n2)])
        self._replace(n, n2)
        takers = self.routes.set_eligible(n2.id, self.serving(n2))
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
        self._emit(NodeChanged(n.id, Why.RENAMED))
        return n2
