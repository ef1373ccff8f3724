"""Primary subnet-route election.

Several nodes may serve the same subnet (high availability); clients route a prefix through
exactly one of them, its primary. As headscale does, the primary is elected among the nodes
that advertise the prefix, have it approved, are online and unexpired (``RouteTable``). Exit
routes (0.0.0.0/0, ::/0) are never primary routes: every approved exit node is offered as one.
"""

from __future__ import annotations

import bisect
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
    """node id -> the subnet prefixes it is primary for, were every router online (the offline
    policy tool's view: lowest ID wins; nodes primary for nothing are left out)."""
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
    seen = set(out)  # a set, not ``in out``: routers may carry thousands of routes
    for route in auto:
        if route not in seen:
            seen.add(route)
            out.append(route)
    return tuple(out)


class RouteEngine(Protocol):
    """The two PolicyEngine questions a per-viewer route view needs."""

    def route_visible(self, viewer_id: int, route: str) -> bool: ...

    def route_via_tags(self, viewer_id: int, route: str) -> frozenset[str]: ...


class RouteTable:
    """Who serves which subnet, and who is primary for it; kept up to date incrementally.

    Only eligible routers (online, key not expired) are elected, as in headscale: the current
    primary keeps its prefixes while it stays eligible (no flapping back when a lower-ID
    router returns); when it goes offline or expires the lowest-ID eligible router takes
    over; with none eligible the prefix has no primary and nobody offers it.

    A node's change only re-elects the prefixes it serves or served, so a route change costs
    in proportion to the routers of those prefixes and the routes of the nodes whose primary
    lists change, never to the size of the tailnet (and never quadratic in a node's routes).
    """

    def __init__(self) -> None:
        self.subnets: dict[int, tuple[str, ...]] = {}  # node -> served subnet (non-exit) routes
        self.exits: dict[int, tuple[str, ...]] = {}  # node -> served exit routes
        self.tags: dict[int, frozenset[str]] = {}  # tags of nodes serving subnets (for via)
        self.routers: dict[str, list[int]] = {}  # prefix -> ids serving it, lowest first
        self.primary: dict[str, int] = {}  # prefix -> its elected router
        self.primaries: dict[int, list[str]] = {}  # node -> prefixes it is primary for
        self.eligible: set[int] = set()  # online routers whose key has not expired

    def set_eligible(self, node_id: int, eligible: bool) -> set[int]:
        """The node came online or went offline (or expired); return the ids whose primary
        lists changed."""
        if eligible == (node_id in self.eligible):
            return set()
        if eligible:
            self.eligible.add(node_id)
        else:
            self.eligible.discard(node_id)
        return self._reelect(set(self.subnets.get(node_id, ())))

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
        now, before = set(subnets), set(old_subnets)
        for route in before - now:
            _put(self.routers, route, [i for i in self.routers.get(route, []) if i != node.id])
        for route in now - before:
            bisect.insort(self.routers.setdefault(route, []), node.id)
        touched = before | now
        if subnets != old_subnets and before == now:
            self._relist({node.id})  # same prefixes, new order
        return changed | self._reelect(touched) | ({node.id} if tags_changed else set())

    def remove(self, node_id: int) -> set[int]:
        """Forget a node; return the ids (other than it) that took over its prefixes."""
        old = self.subnets.pop(node_id, ())
        self.exits.pop(node_id, None)
        self.tags.pop(node_id, None)
        self.eligible.discard(node_id)
        for route in old:
            _put(self.routers, route, [i for i in self.routers.get(route, []) if i != node_id])
        return self._reelect(set(old)) - {node_id}

    def _elect(self, route: str) -> int | None:
        current = self.primary.get(route)
        ids = self.routers.get(route, ())
        if current is not None and current in self.eligible and current in ids:
            return current  # a working primary is kept
        return next((i for i in ids if i in self.eligible), None)

    def _reelect(self, routes: set[str]) -> set[int]:
        """Re-elect ``routes``; return the nodes whose primary list changed."""
        moved: set[int] = set()
        for route in routes:
            old, new = self.primary.get(route), self._elect(route)
            if old == new:
                continue
            _put(self.primary, route, new)
            moved |= {i for i in (old, new) if i is not None}
        return self._relist(moved)

    def _relist(self, ids: set[int]) -> set[int]:
        """Rebuild the primary lists of ``ids`` in the order each serves its routes (stable
        output); return those whose list changed."""
        changed: set[int] = set()
        for i in ids:
            now = [r for r in self.subnets.get(i, ()) if self.primary.get(r) == i]
            if now != self.primaries.get(i, []):
                changed.add(i)
            _put(self.primaries, i, now)
        return changed

    def routes_for(self, engine: RouteEngine, viewer_id: int, peer_id: int) -> list[str]:
        """The subnet routes ``viewer`` reaches through ``peer``: those the peer serves for it
        (the primary, or the eligible router a ``via`` grant steers it to) and it may use."""
        out: list[str] = []
        for route in self.subnets.get(peer_id, ()):
            winner = self.primary.get(route)
            via = engine.route_via_tags(viewer_id, route)
            if via:
                winner = next((i for i in self.routers.get(route, ())
                               if i in self.eligible and via & self.tags.get(i, frozenset())),
                              winner)
            if winner == peer_id and engine.route_visible(viewer_id, route):
                out.append(route)
        return out


def _put(table: dict[Any, Any], key: Any, value: Any) -> None:
    """Store ``value`` or drop the key when it is empty (tables hold routers only)."""
    if value:
        table[key] = value
    else:
        table.pop(key, None)
