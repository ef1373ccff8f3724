"""The policy bridge of State: nodes and users as policy sees them (cached), what autoApprovers
approve, and the route table kept in step with both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from meshscale.config import Config
from meshscale.policy import Affected, PolicyNode, PolicyUser
from meshscale.state.base import StateBase
from meshscale.state.models import Node, User
from meshscale.state.routes import RouteTable, effective_approved
from meshscale.storage.base import Storage


class PolicyBridge(StateBase):
    """Keeps the policy engine and the route table in step with users and nodes."""

    def __init__(self, config: Config, storage: Storage) -> None:
        super().__init__(config, storage)
        self._policy_nodes: dict[int, tuple[Node, dict[str, Any], tuple[str, ...] | None,
                                            PolicyNode]] = {}
        self._policy_listeners: list[Callable[[Affected], None]] = []
        self.policy_engine_hooks: PolicyHooks | None = None
        # Subnet routers and primaries. Approved = admin-approved plus what autoApprovers
        # approve now (``_auto``, recomputed on policy change, never stored: a policy that
        # stops approving a route withdraws it).
        self.routes = RouteTable()
        self._auto: dict[int, tuple[str, ...]] = {}

    def _unindex(self, n: Node) -> None:
        self._policy_nodes.pop(n.id, None)
        super()._unindex(n)

    # -- policy bridge -------------------------------------------------------------------------

    def policy_user(self, u: User) -> PolicyUser:
        return PolicyUser(id=u.id, name=u.name, email=u.email, groups=frozenset(u.groups))

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
        if not n.approved:
            return set()  # not part of the tailnet until approved: policy and routes ignore it
        self._auto_approve(n)
        node = self.policy_node(n)
        if self.policy_engine_hooks:
            self.policy_engine_hooks.node_upserted(node)
        moved = self.routes.set_eligible(n.id, self.serving(n))
        return (moved | self.routes.update(node)) - {n.id}

    def refresh_auto_approvals(self) -> None:
        """After a policy change: re-decide autoApprovers for every node advertising routes;
        nodes whose routes changed go to policy, the route table and their peers."""
        changed: set[int] = set()
        for n in self.nodes_sorted():
            if (not n.routable_ips and n.id not in self._auto) or not n.approved:
                continue
            if self._auto_approve(n):
                node = self.policy_node(n)
                if self.policy_engine_hooks:
                    self.policy_engine_hooks.node_upserted(node)
                changed |= self.routes.update(node)
        self._emit_changed(changed)

    def policy_topology(self) -> tuple[list[PolicyUser], list[PolicyNode]]:
        return (
            [self.policy_user(u) for u in self.users.values()],
            [self.policy_node(n) for n in self.nodes.values() if n.approved],
        )

    def _notify_policy_user(self, u: User) -> None:
        if self.policy_engine_hooks:
            self.policy_engine_hooks.user_upserted(self.policy_user(u))
            # autoApprovers may name the user: their routers' approvals may change.
            changed: set[int] = set()
            for n in list(self.user_nodes(u.id)):
                if n.routable_ips and n.approved and self._auto_approve(n):
                    node = self.policy_node(n)
                    self.policy_engine_hooks.node_upserted(node)
                    changed |= self.routes.update(node)
            self._emit_changed(changed)


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
