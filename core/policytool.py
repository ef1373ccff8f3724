"""Offline policy compilation: a policy plus a described tailnet -> what each node receives.

Used by ``meshscale policy compile`` and by the conformance tests. It goes through the
PolicyEngine protocol only, so any engine can be checked the same way.

Topology format (the conformance corpus's)::

    {"users": [{"id": 1, "name": "alice", "email": "alice@example.com"}],
     "nodes": {"laptop": {"user": "alice", "tags": [], "ipv4": "100.64.0.1",
                          "ipv6": "fd7a:115c:a1e0::1", "routable_ips": [],
                          "approved_routes": [], "id": 7}}}

``id`` is optional; nodes without one are numbered in the order given. The lower id wins the
primary-route election, so give ids when the registration order matters.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshscale.errors import PolicyError
from meshscale.policy import PolicyEngine, PolicyNode, PolicyUser
from meshscale.state.routes import EXIT_ROUTES, exit_routes, primary_routes, served_routes


def _host(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def build_topology(topology: dict[str, Any]) -> tuple[list[PolicyUser], list[PolicyNode]]:
    """PolicyUser and PolicyNode values from the topology format above."""
    users = [
        PolicyUser(id=int(u["id"]), name=str(u["name"]), email=str(u.get("email", "")))
        for u in topology.get("users", [])
    ]
    by_name = {u.name: u.id for u in users}
    nodes: list[PolicyNode] = []
    used = {int(n["id"]) for n in topology.get("nodes", {}).values() if "id" in n}
    next_id = 1
    for hostname, spec in topology.get("nodes", {}).items():
        if "id" in spec:
            node_id = int(spec["id"])
        else:
            while next_id in used:
                next_id += 1
            node_id = next_id
            used.add(node_id)
        tags = frozenset(spec.get("tags") or ())
        user = spec.get("user")
        if not tags and user is not None and user not in by_name:
            raise PolicyError(f"topology.nodes[{hostname!r}].user", f"unknown user {user!r}")
        nodes.append(
            PolicyNode(
                id=node_id,
                hostname=spec.get("hostname", hostname),
                user_id=None if tags or user is None else by_name[user],
                tags=tags,
                ipv4=spec.get("ipv4"),
                ipv6=spec.get("ipv6"),
                routable_ips=tuple(spec.get("routable_ips") or ()),
                approved_routes=tuple(spec.get("approved_routes") or ()),
            )
        )
    return users, nodes


def compile_topology(
    engine: PolicyEngine, policy_text: str, topology: dict[str, Any]
) -> dict[str, Any]:
    """Load ``policy_text`` into ``engine`` for ``topology``; return every node's view.

    Raises PolicyError when the engine refuses the policy.
    """
    users, nodes = build_topology(topology)
    engine.set_topology(users, nodes)
    engine.set_policy(policy_text)
    # Routes autoApprovers approve count as approved, as on a live server.
    for i, node in enumerate(nodes):
        extra = [r for r in engine.auto_approved_routes(node) if r not in node.approved_routes]
        if extra:
            nodes[i] = replace(node, approved_routes=node.approved_routes + tuple(extra))
            engine.upsert_node(nodes[i])
    primaries = primary_routes(nodes)
    serving: dict[str, list[PolicyNode]] = {}
    for n in sorted(nodes, key=lambda n: n.id):
        for r in served_routes(n):
            if r not in EXIT_ROUTES:
                serving.setdefault(r, []).append(n)

    def router_for(viewer: int, route: str, default: int) -> int:
        """Grants with ``via`` steer a viewer's route to the first router with a via tag."""
        tags = engine.route_via_tags(viewer, route)
        for n in serving.get(route, []) if tags else []:
            if tags & n.tags:
                return n.id
        return default

    by_id = {n.id: n for n in nodes}
    out: dict[str, Any] = {}
    for node in nodes:
        visible = engine.visible_peers(node.id)
        peer_ids = sorted(by_id) if visible is None else sorted(set(visible))
        peer_routes: dict[int, list[str]] = {}
        for route, routers in serving.items():
            winner = router_for(node.id, route, routers[0].id)
            peer_routes.setdefault(winner, []).append(route)
        peers = []
        for pid in peer_ids:
            if pid == node.id or pid not in by_id:
                continue
            peer = by_id[pid]
            allowed = engine.peer_allowed_ips(node.id, peer)
            if allowed is None:
                allowed = [_host(a) for a in peer.addresses]
            routes = [
                r for r in peer_routes.get(pid, [])
                if engine.route_visible(node.id, r)
            ]
            allowed = allowed + [r for r in routes + exit_routes(peer) if r not in allowed]
            peers.append(
                {"name": peer.hostname, "allowed_ips": allowed, "primary_routes": routes or None}
            )
        ssh = engine.ssh_policy(node.id)
        out[node.hostname] = {
            "packet_filter_rules": engine.packet_filter(node.id),
            "peers": peers,
            "ssh_rules": [] if ssh is None else ssh.get("rules", []),
            "cap_map": dict(engine.cap_map(node.id)),
            "self_primary_routes": primaries.get(node.id) or None,
        }
    return {"nodes": out}
