"""Primary subnet-route election.

Several nodes may serve the same subnet (high availability); clients route a prefix through
exactly one of them, its primary. As headscale does, the primary is the lowest-ID node that
advertises the prefix and has it approved. Exit routes (0.0.0.0/0, ::/0) are never primary
routes: every approved exit node is offered as one.
"""

from __future__ import annotations

from collections.abc import Iterable

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
