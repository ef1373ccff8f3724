"""The engine's view of the tailnet: users and nodes, indexed for alias matching.

Addresses and routes of each node are parsed once when the node is upserted, so policy
questions never re-parse strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshscale.plugins.policy.addrset import EMPTY, EXIT_ROUTES, AddrSet
from meshscale.policy import PolicyNode, PolicyUser


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node: PolicyNode
    addrs: AddrSet  # the node's own addresses
    ips: tuple[str, ...]  # the same, as written ("100.64.0.1", "fd7a:...")
    routes: AddrSet  # approved and advertised subnet routes (exit routes excluded)
    route_list: tuple[str, ...]
    is_exit: bool  # an approved, advertised exit route

    @property
    def id(self) -> int:
        return self.node.id

    @property
    def tagged(self) -> bool:
        return bool(self.node.tags)

    @staticmethod
    def of(node: PolicyNode) -> NodeInfo:
        ips = node.addresses
        advertised = set(node.routable_ips)
        approved = [r for r in node.approved_routes if r in advertised]
        subnet = tuple(r for r in approved if r not in EXIT_ROUTES)
        return NodeInfo(
            node=node,
            addrs=AddrSet.of(ips) if ips else EMPTY,
            ips=ips,
            routes=AddrSet.of(subnet) if subnet else EMPTY,
            route_list=subnet,
            is_exit=any(r in EXIT_ROUTES for r in approved),
        )


class Tailnet:
    """Users and nodes by id, plus the indexes alias matching needs."""

    def __init__(self) -> None:
        self.users: dict[int, PolicyUser] = {}
        self.nodes: dict[int, NodeInfo] = {}
        self.user_tokens: dict[str, int | None] = {}  # None: ambiguous
        self.nodes_by_user: dict[int, set[int]] = {}

    def set_users(self, users: list[PolicyUser]) -> None:
        self.users = {u.id: u for u in users}
        self._index_users()

    def upsert_user(self, user: PolicyUser) -> None:
        self.users[user.id] = user
        self._index_users()

    def remove_user(self, user_id: int) -> None:
        self.users.pop(user_id, None)
        self._index_users()

    def _index_users(self) -> None:
        # Policies name users by e-mail or by "name@"; a token matching two users matches none.
        tokens: dict[str, int | None] = {}
        for user in sorted(self.users.values(), key=lambda u: u.id):
            for token in {user.email, user.name + "@", user.name} - {"", "@"}:
                tokens[token] = None if token in tokens and tokens[token] != user.id else user.id
        self.user_tokens = tokens

    def user_for(self, token: str) -> int | None:
        return self.user_tokens.get(token) or self.user_tokens.get(token.removesuffix("@"))

    def owner(self) -> PolicyUser | None:
        """The tailnet's owner: the first user (lowest id), who created it."""
        return min(self.users.values(), key=lambda u: u.id) if self.users else None

    def domains(self) -> frozenset[str] | None:
        """E-mail domains associated with the tailnet: the owner's. None when unknown."""
        owner = self.owner()
        if owner is None or "@" not in owner.email:
            return None
        return frozenset({owner.email.rpartition("@")[2]})

    def upsert_node(self, node: PolicyNode) -> NodeInfo | None:
        old = self.nodes.get(node.id)
        if old is not None and old.node.user_id is not None:
            self.nodes_by_user.get(old.node.user_id, set()).discard(node.id)
        info = NodeInfo.of(node)
        self.nodes[node.id] = info
        if node.user_id is not None and not node.tags:
            self.nodes_by_user.setdefault(node.user_id, set()).add(node.id)
        return old

    def remove_node(self, node_id: int) -> NodeInfo | None:
        old = self.nodes.pop(node_id, None)
        if old is not None and old.node.user_id is not None:
            self.nodes_by_user.get(old.node.user_id, set()).discard(node_id)
        return old

    def subnet_routes(self) -> AddrSet:
        return AddrSet.union_all(n.routes for n in self.nodes.values())
