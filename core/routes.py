"""Primary subnet-route election.

Several nodes may serve the same subnet (high availability); clients route a prefix through
exactly one of them, its primary. As headscale does, the primary is the lowest-ID node that
advertises the prefix and has it approved. Exit routes (0.0.0.0/0, ::/0) are never primary
routes: every approved exit node is offered as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from meshscale.policy import PolicyNode

EXIT_ROUTES = frozenset({"0.0.0.0/0", "::/0"})


def served_routes(node: PolicyNode) -> list[str]:
    """Routes the node both advertises and has approved, in approval order."""
    advertised = set(node.routable_ips)
    return [r for r in node.approved_routes if r in advertised]


def exit_routes(node: PolicyNode) -> list[str]:
    """The node's approved, advertised exit routes."""
    return [r for r in served_routes(node) if r in EXIT_ROUTES]


def primary_routes(nodes: Iterable[PolicyNode]) -> dict[int, list[str]]:
    """node id -> the subnet prefixes it is primary for (nodes that are primary for nothing are
    left out)."""
    winner: dict[str, int] = {}
    for node in sorted(nodes, key=lambda n: n.id):
        for route in served_routes(node):
            if route not in EXIT_ROUTES:
                winner.setdefault(route, node.id)
    out: dict[int, list[str]] = {}
    for route, node_id in winner.items():
        out.setdefault(node_id, []).append(route)
    return out


def effective_approved(node: PolicyNode, auto: Iterable[str]) -> tuple[str, ...]:
    """Admin-approved routes followed by the auto-approved ones not already listed."""
    out = list(node.approved_routes)
    for route in auto:
        if route not in out:
            out.append(route)
    return tuple(out)


class RouteEngine(Protocol):
    """The two PolicyEngine questions a per-viewer route view needs."""

    def route_visible(self, viewer_id: int, route: str) -> bool: ...

    def route_via_tags(self, viewer_id: int, route: str) -> frozenset[str]: ...


class RouteTable:
    """Who serves which subnet, and who is primary for it; kept up to date incrementally.

    A node's change only re-elects the prefixes it serves or served, so a route change costs
    in proportion to the routers of those prefixes, never to the size of the tailnet.
    """

    def __init__(self) -> None:
        self.subnets: dict[int, tuple[str, ...]] = {}  # node -> served subnet (non-exit) routes
        self.exits: dict[int, tuple[str, ...]] = {}  # node -> served exit routes
        self.tags: dict[int, frozenset[str]] = {}  # tags of nodes serving subnets (for via)
        self.routers: dict[str, list[int]] = {}  # prefix -> ids serving it, lowest first
        self.primaries: dict[int, list[str]] = {}  # node -> prefixes it is primary for

    def update(self, node: PolicyNode) -> set[int]:
        """Take the node's current routes; return the ids whose routes or primaries changed."""
        served = served_routes(node)
        subnets = tuple(r for r in served if r not in EXIT_ROUTES)
        exits = tuple(r for r in served if r in EXIT_ROUTES)
        old_subnets = self.subnets.get(node.id, ())
        changed: set[int] = set()
        if exits != self.exits.get(node.id, ()):
            changed.add(node.id)
            _put(self.exits, node.id, exits)
        tags_changed = bool(subnets) and self.tags.get(node.id) != node.tags
        if subnets == old_subnets and not tags_changed:
            return changed
        if subnets != old_subnets:
            changed.add(node.id)
        _put(self.subnets, node.id, subnets)
        if subnets:
            self.tags[node.id] = node.tags
        else:
            self.tags.pop(node.id, None)
        touched = set(old_subnets) | set(subnets)
        for route in touched:
            ids = [i for i in self.routers.get(route, []) if i != node.id]
            if route in subnets:
                ids.append(node.id)
                ids.sort()
            _put(self.routers, route, ids)
        return changed | self._reelect(touched) | ({node.id} if tags_changed else set())

    def remove(self, node_id: int) -> set[int]:
        """Forget a node; return the ids (other than it) that took over its prefixes."""
        old = self.subnets.pop(node_id, ())
        self.exits.pop(node_id, None)
        self.tags.pop(node_id, None)
        for route in old:
            _put(self.routers, route, [i for i in self.routers.get(route, []) if i != node_id])
        return self._reelect(set(old)) - {node_id}

    def _reelect(self, routes: set[str]) -> set[int]:
        """Recompute the primaries of ``routes``; return the nodes whose primary list changed."""
        if not routes:
            return set()
        before = {i: list(p) for i, p in self.primaries.items() if routes.intersection(p)}
        for i in before:
            self.primaries[i] = [r for r in self.primaries[i] if r not in routes]
        for route in routes:
            ids = self.routers.get(route)
            if ids:
                self.primaries.setdefault(ids[0], []).append(route)
        changed: set[int] = set()
        for i in set(before) | {ids[0] for r in routes if (ids := self.routers.get(r))}:
            now = self.primaries.get(i, [])
            # Keep each node's list in the order it serves them (stable output).
            order = self.subnets.get(i, ())
            now.sort(key=lambda r: order.index(r) if r in order else len(order))
            if not now:
                self.primaries.pop(i, None)
            if sorted(now) != sorted(before.get(i, [])):
                changed.add(i)
        return changed

    def routes_for(self, engine: RouteEngine, viewer_id: int, peer_id: int) -> list[str]:
        """The subnet routes ``viewer`` reaches through ``peer``: those the peer serves for it
        (the primary, or the router a ``via`` grant steers it to) and it may use."""
        out: list[str] = []
        for route in self.subnets.get(peer_id, ()):
            ids = self.routers.get(route) or [peer_id]
            winner = ids[0]
            via = engine.route_via_tags(viewer_id, route)
            if via:
                winner = next((i for i in ids if via & self.tags.get(i, frozenset())), winner)
            if winner == peer_id and engine.route_visible(viewer_id, route):
                out.append(route)
        return out


def _put(table: dict[Any, Any], key: Any, value: Any) -> None:
    """Store ``value`` or drop the key when it is empty (tables hold routers only)."""
    if value:
        table[key] = value
    else:
        table.pop(key, None)
