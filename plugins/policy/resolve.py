"""Which nodes and addresses an alias stands for, against the current tailnet.

Identity aliases (users, groups, tags, autogroups) match nodes; address aliases (hosts,
prefixes) match addresses. Group and domain memberships are resolved to user ids once per
policy or user change, so matching one node is a few set lookups.
"""

from __future__ import annotations

from meshscale.plugins.policy.addrset import EMPTY, INTERNET, TAILNET, AddrSet
from meshscale.plugins.policy.model import Alias, Policy
from meshscale.plugins.policy.tailnet import NodeInfo, Tailnet


class Resolver:
    def __init__(self, policy: Policy, tailnet: Tailnet) -> None:
        self.policy = policy
        self.tailnet = tailnet
        self.refresh_users()

    def refresh_users(self) -> None:
        tn = self.tailnet
        # Members the policy lists, plus users whose login provider puts them in the group
        # (OIDC ``groups`` claim "devs" or "group:devs" for group:devs).
        self.group_users: dict[str, frozenset[int]] = {
            name: frozenset(u for u in (tn.user_for(m) for m in members) if u is not None)
            | frozenset(u.id for u in tn.users.values()
                        if name in u.groups or name.removeprefix("group:") in u.groups)
            for name, members in self.policy.groups.items()
        }
        owner = tn.owner()
        self.owner_id = owner.id if owner else None

    def user_ids(self, a: Alias) -> frozenset[int] | None:
        """The users an identity alias covers, or None when it is not user-based."""
        tn = self.tailnet
        if a.kind == "user":
            uid = tn.user_for(a.name)
            return frozenset() if uid is None else frozenset({uid})
        if a.kind == "group":
            return self.group_users.get(a.name, frozenset())
        if a.kind == "userdomain":
            domain = "@" + a.name.rpartition("@")[2]
            return frozenset(u.id for u in tn.users.values() if u.email.endswith(domain))
        if a.name == "autogroup:owner":
            return frozenset() if self.owner_id is None else frozenset({self.owner_id})
        return None

    def is_identity(self, a: Alias, n: NodeInfo) -> bool:
        """Does node ``n`` belong to the identity alias ``a``? (False for address aliases.)"""
        kind = a.kind
        if kind == "*":
            return True
        if kind == "tag":
            return a.name in n.node.tags
        if kind == "autogroup":
            name = a.name
            if name in ("autogroup:member", "autogroup:admin"):
                # meshscale has no user roles: every user administers their own tailnet.
                return not n.tagged and n.node.user_id is not None
            if name == "autogroup:tagged":
                return n.tagged
            if name == "autogroup:danger-all":
                return True
            if name != "autogroup:owner":
                return False
        users = self.user_ids(a)
        if users is None:
            return False
        return not n.tagged and n.node.user_id in users

    def contains_node(self, a: Alias, n: NodeInfo, *, routes: bool = False) -> bool:
        """Is ``n`` covered by ``a``: by identity, by address, or (``routes``) by one of its
        subnet routes overlapping an address alias, or being an exit node for the internet."""
        if a.kind in ("host", "prefix"):
            if n.addrs.overlaps(a.addrs):
                return True
            return routes and (
                n.routes.overlaps(a.addrs) or (n.is_exit and INTERNET.issuperset(a.addrs))
            )
        if a.name == "autogroup:internet":
            return routes and n.is_exit
        return self.is_identity(a, n)

    def addrs(self, aliases: tuple[Alias, ...]) -> AddrSet:
        """The addresses a source list stands for (what goes into SrcIPs)."""
        parts: list[AddrSet] = []
        for a in aliases:
            if a.kind in ("host", "prefix"):
                parts.append(a.addrs)
            elif a.kind == "*":
                parts.append(TAILNET)
                parts.append(self.tailnet.subnet_routes())
            elif a.name == "autogroup:danger-all":
                parts.append(AddrSet.parse("*"))
            elif a.name == "autogroup:internet":
                parts.append(INTERNET)
            else:
                parts.extend(
                    n.addrs for n in self.tailnet.nodes.values() if self.is_identity(a, n)
                )
        return AddrSet.union_all(parts) if parts else EMPTY
