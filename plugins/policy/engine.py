"""``TailscalePolicyEngine``: the PolicyEngine protocol over Tailscale's policy language.

Compiled once per policy change (``set_policy``); afterwards a node joining or changing only
re-tests that node's membership in each grant (``upsert_node``), and per-node questions read the
compiled grants. Endpoint changes never reach the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from meshscale import bitset
from meshscale.errors import PolicyError
from meshscale.plugins.policy.addrset import AddrSet
from meshscale.plugins.policy.compile import CompiledGrant, merge_rules
from meshscale.plugins.policy.model import Policy
from meshscale.plugins.policy.parse import parse_policy
from meshscale.plugins.policy.policytests import run_ssh_tests, run_tests
from meshscale.plugins.policy.render import render_filter
from meshscale.plugins.policy.resolve import Resolver
from meshscale.plugins.policy.ssh import SSHCompiler
from meshscale.plugins.policy.tailnet import NodeInfo, Tailnet
from meshscale.plugins.policy.views import Visibility, carry_members, policy_affected
from meshscale.policy import ALLOW_ALL_FILTER, Affected, PolicyNode, PolicyUser, Rule

# nodeAttrs that stand for several capabilities on the wire.
ATTR_EXPANSIONS = {
    "funnel": (
        "funnel",
        "https://tailscale.com/cap/funnel-ports?ports=443,8443,10000",
        "https://tailscale.com/cap/warn-funnel-no-https",
    ),
}


class _Compiled:
    """One policy compiled against one tailnet."""

    def __init__(self, policy: Policy, tailnet: Tailnet, control_url: str, slots: bitset.Slots,
                 previous: _Compiled | None = None) -> None:
        self.policy = policy
        self.tailnet = tailnet
        self.resolver = Resolver(policy, tailnet)
        self.grants = [CompiledGrant.of(g) for g in policy.grants]
        self.ssh = SSHCompiler(policy.ssh, control_url)
        self.visibility = Visibility(self.grants, tailnet, slots)
        fresh = self.grants
        if previous is not None and previous.tailnet is tailnet:
            fresh = carry_members(previous.policy, previous.grants, policy, self.grants)
            if previous.policy.ssh == policy.ssh and fresh is not self.grants:
                self.ssh = previous.ssh  # same rules over the same members: same caches
        for n in tailnet.nodes.values():
            self._place(n, fresh)

    def _place(self, n: NodeInfo, grants: list[CompiledGrant] | None = None) -> None:
        for g in self.grants if grants is None else grants:
            if g.in_src(self.resolver, n):
                g.src_nodes.add(n.id)
            if g.in_dst(self.resolver, n):
                g.dst_nodes.add(n.id)

    def node_changed(self, node_id: int, old: NodeInfo | None) -> Affected:
        """Re-test one node's membership in every grant and SSH rule; say whose views may
        change. Every grant and rule is brought up to date before answering: an early answer
        of "everyone" must not leave a later grant's membership or the SSH cache stale
        (issue 21: SSH principals missed a joining node under a "*" ACL)."""
        new = self.tailnet.nodes.get(node_id)
        self.visibility.clear()
        affected: set[int] = {node_id}
        everyone = False
        routes_changed = (old.routes if old else None) != (new.routes if new else None)
        for g in self.grants:
            was_src = node_id in g.src_nodes
            was_dst = node_id in g.dst_nodes
            touched = g.update(self.resolver, new, node_id)
            if routes_changed and g.src_all:
                g.invalidate()  # "*" sources carry every approved subnet route
                touched = True
            if not touched or everyone:
                continue
            if was_src or node_id in g.src_nodes or (routes_changed and g.src_all):
                # The node's addresses are (or were) in this grant's SrcIPs: every destination
                # of the grant gets a new filter.
                if g.dst_all:
                    everyone = True
                    continue
                affected |= g.dst_nodes
            if was_dst or node_id in g.dst_nodes:
                if g.src_all:
                    everyone = True
                    continue
                affected |= g.src_nodes
            if g.self_dst:
                for x in (old, new):
                    if x is not None and x.node.user_id is not None:
                        affected |= self.tailnet.nodes_by_user.get(x.node.user_id, set())
        if self.policy.ssh:
            changed = [x for x in (old, new) if x is not None]
            as_src, as_dst = self.ssh.touched_by(self.resolver, changed)
            # A source's addresses appear as principals in its destinations' SSH policies.
            for i in as_src:
                for x in changed:
                    affected |= self.ssh.destinations(self.resolver, i, x)
            self.ssh.invalidate(as_src | as_dst)
        if everyone:
            return Affected.all()
        return Affected(nodes=frozenset(affected))

    def users_changed(self) -> None:
        self.visibility.clear()
        self.resolver.refresh_users()
        for g in self.grants:
            g.src_nodes.clear()
            g.dst_nodes.clear()
            g.invalidate()
        for n in self.tailnet.nodes.values():
            self._place(n)
        self.ssh.invalidate()

    # -- per-node answers ---------------------------------------------------------------------

    def packet_filter(self, node_id: int) -> list[Rule]:
        if not self.policy.has_rules:
            return ALLOW_ALL_FILTER
        n = self.tailnet.nodes.get(node_id)
        if n is None:
            return []
        rules: list[Rule] = []
        for g in self.grants:
            rules.extend(g.rules_for(self.resolver, n))
        return merge_rules(rules)

    def visible_peers(self, node_id: int) -> set[int] | None:
        """Peers this node may reach or be reached by; None when that is everyone."""
        if not self.policy.has_rules:
            return None
        n = self.tailnet.nodes.get(node_id)
        if n is None:
            return set()
        peers: set[int] = set()
        for g in self.grants:
            if node_id in g.src_nodes:
                if g.dst_all:
                    return None
                peers |= g.dst_nodes
            if node_id in g.dst_nodes:
                if g.src_all:
                    return None
                peers |= g.src_nodes
            same_user = g.self_dst and not n.tagged and n.node.user_id is not None
            if same_user and node_id in g.src_nodes and n.node.user_id is not None:
                peers |= self.tailnet.nodes_by_user.get(n.node.user_id, set())
        peers.discard(node_id)
        return peers

    def route_visible(self, viewer_id: int, route: str) -> bool:
        try:
            target = AddrSet.parse(route)
        except ValueError:
            return False
        r = self.resolver
        viewer = self.tailnet.nodes.get(viewer_id)
        if viewer is not None and route in viewer.route_list:
            return True  # routers serving the same subnet (HA pairs) see each other's routes
        for g in self.grants:
            if viewer_id in g.src_nodes and g.covers_dst(target, via=bool(g.grant.via)):
                return True
            if viewer_id in g.dst_nodes and (g.danger_all or g.src_addrs(r).overlaps(target)):
                return True
        return False

    def route_via_tags(self, viewer_id: int, route: str) -> frozenset[str]:
        try:
            target = AddrSet.parse(route)
        except ValueError:
            return frozenset()
        tags: set[str] = set()
        for g in self.grants:
            if viewer_id not in g.src_nodes:
                continue
            if g.grant.via:
                if g.covers_dst(target, via=True):
                    tags.update(g.grant.via)
            elif g.covers_dst(target):
                return frozenset()  # a grant without via reaches it: normal primary routing
        return frozenset(tags)

    def ipv4_disabled(self, node_id: int) -> bool:
        return "disable-ipv4" in self.cap_map(node_id)

    def ssh_policy(self, node_id: int) -> dict[str, Any] | None:
        n = self.tailnet.nodes.get(node_id)
        if n is None:
            return None
        rules = self.ssh.policy_for(self.resolver, n)
        if rules is None:
            return None
        return {"rules": rules}

    def cap_map(self, node_id: int) -> dict[str, list[Any] | None]:
        n = self.tailnet.nodes.get(node_id)
        out: dict[str, list[Any] | None] = {}
        if n is None:
            return out
        if self.policy.randomize_client_port:
            out["randomize-client-port"] = None
        for na in self.policy.node_attrs:
            if any(self.resolver.contains_node(a, n) for a in na.targets):
                for attr in na.attrs:
                    for cap in ATTR_EXPANSIONS.get(attr, (attr,)):
                        out.setdefault(cap, None)
        return out


class TailscalePolicyEngine:
    """Tailscale HuJSON policies: acls, grants, ssh, nodeAttrs, autoApprovers, tests."""

    def __init__(self, control_url: str = "") -> None:
        self.control_url = control_url
        self.tailnet = Tailnet()
        # Bit positions of ``visible_peer_bits``, for the server's lifetime: the mapper uses
        # the same object and releases a node's slot once no stream holds its bit.
        self.node_slots = bitset.Slots()
        self.compiled: _Compiled | None = None

    # -- policy -------------------------------------------------------------------------------

    def _compile(self, text: str, tailnet: Tailnet, tests: bool = True,
                 previous: _Compiled | None = None) -> _Compiled:
        policy = parse_policy(text, tailnet.domains())
        compiled = _Compiled(policy, tailnet, self.control_url, self.node_slots, previous)
        if not tests:
            return compiled
        run_tests(policy, compiled.resolver, compiled.grants)
        run_ssh_tests(
            policy, compiled.resolver, lambda n: compiled.ssh.policy_for(compiled.resolver, n)
        )
        return compiled

    def check(
        self, text: str, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]
    ) -> None:
        tailnet = Tailnet()
        tailnet.set_users(list(users))
        for node in nodes:
            tailnet.upsert_node(node)
        self._compile(text, tailnet)

    def set_policy(self, text: str | None, tests: bool = True) -> Affected:
        if text is None or not text.strip():
            self.compiled = None
            return Affected.all()
        old = self.compiled
        self.compiled = self._compile(text, self.tailnet, tests, previous=old)
        if old is None or old.tailnet is not self.tailnet:
            return Affected.all()
        new = self.compiled
        return policy_affected(old.policy, old.grants, new.policy, new.grants, self.tailnet)

    def set_topology(self, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> None:
        self.tailnet = Tailnet()
        self.tailnet.set_users(list(users))
        for node in nodes:
            self.tailnet.upsert_node(node)
        if self.compiled is not None:
            self.compiled = _Compiled(self.compiled.policy, self.tailnet, self.control_url,
                                      self.node_slots)

    # -- topology changes ---------------------------------------------------------------------

    def upsert_user(self, user: PolicyUser) -> Affected:
        self.tailnet.upsert_user(user)
        if self.compiled is None:
            return Affected.none()
        self.compiled.users_changed()
        nodes = frozenset(i for i, n in self.tailnet.nodes.items() if n.node.user_id == user.id)
        return Affected.all() if nodes else Affected.none()

    def remove_user(self, user_id: int) -> Affected:
        self.tailnet.remove_user(user_id)
        if self.compiled is None:
            return Affected.none()
        self.compiled.users_changed()
        return Affected.all()

    def upsert_node(self, node: PolicyNode) -> Affected:
        old = self.tailnet.upsert_node(node)
        if self.compiled is None:
            return Affected.none() if old is not None else Affected.all()
        return self.compiled.node_changed(node.id, old)

    def remove_node(self, node_id: int) -> Affected:
        old = self.tailnet.remove_node(node_id)
        if old is None:
            return Affected.none()
        if self.compiled is None:
            return Affected.all()
        return self.compiled.node_changed(node_id, old)

    # -- per-node answers ---------------------------------------------------------------------

    def packet_filter(self, node_id: int) -> list[Rule]:
        return ALLOW_ALL_FILTER if self.compiled is None else self.compiled.packet_filter(node_id)

    def packet_filter_json(self, node_id: int) -> tuple[bytes, bytes]:
        """``packet_filter`` as JSON and a digest of it (render.py), each grant's SrcIPs
        rendered once for every node: the mapper's fast path (policy.py)."""
        return render_filter(self.packet_filter(node_id))

    def visible_peers(self, node_id: int) -> Iterable[int] | None:
        return None if self.compiled is None else self.compiled.visible_peers(node_id)

    def visible_peer_bits(self, node_id: int) -> int | None:
        """``visible_peers`` as a bitset over ``node_slots`` (meshscale.bitset), shared by
        every node of the same class; it may hold the node itself. The mapper's fast path
        (policy.py)."""
        c = self.compiled
        if c is None or not c.policy.has_rules:
            return None
        return c.visibility.bits(node_id)

    def uniform_peer_view(self) -> bool:
        # Only nodeAttrs' disable-ipv4 makes one viewer see a peer's AllowedIPs differently.
        c = self.compiled
        return c is None or not any("disable-ipv4" in na.attrs for na in c.policy.node_attrs)

    def peer_allowed_ips(self, viewer_id: int, peer: PolicyNode) -> list[str] | None:
        # The peer's own addresses (its routes are added by core: routes.py elects primaries,
        # route_visible() filters them). nodeAttrs disable-ipv4 on either end drops IPv4.
        c = self.compiled
        if c is None or not (c.ipv4_disabled(viewer_id) or c.ipv4_disabled(peer.id)):
            return None
        return [f"{a}/128" for a in peer.addresses if ":" in a]

    def route_via_tags(self, viewer_id: int, route: str) -> frozenset[str]:
        """Tags of the routers the viewer's traffic to ``route`` must go through (grants with
        ``via``); empty when the normal primary router serves it."""
        return frozenset() if self.compiled is None else self.compiled.route_via_tags(
            viewer_id, route
        )

    def route_visible(self, viewer_id: int, route: str) -> bool:
        """May the viewer send to, or receive from, the subnet ``route``? Only then does a peer
        serving it carry it in AllowedIPs/PrimaryRoutes for this viewer."""
        return True if self.compiled is None else self.compiled.route_visible(viewer_id, route)

    def ssh_policy(self, node_id: int) -> dict[str, Any] | None:
        return None if self.compiled is None else self.compiled.ssh_policy(node_id)

    def ssh_check_period(self, src_id: int, dst_id: int, local_user: str) -> float | None:
        c = self.compiled
        return None if c is None else c.ssh.check_period(c.resolver, src_id, dst_id, local_user)

    def cap_map(self, node_id: int) -> Mapping[str, list[Any] | None]:
        return {} if self.compiled is None else self.compiled.cap_map(node_id)

    def tags_permitted(self, user: PolicyUser | None, tags: Iterable[str]) -> bool:
        tags = list(tags)
        if self.compiled is None:
            return True
        pol = self.compiled.policy
        r = self.compiled.resolver
        for tag in tags:
            if tag not in pol.tag_owners:
                return False
            if user is None:
                continue  # a tagged key's owner is the tag itself (checked when the key was made)
            if not _owns(pol, r, user, tag, set()):
                return False
        return True

    def auto_approved_routes(self, node: PolicyNode) -> list[str]:
        """The routes ``node`` advertises that autoApprovers approve (exit routes included)."""
        if self.compiled is None:
            return []
        pol = self.compiled.policy
        r = self.compiled.resolver
        info = NodeInfo.of(node)
        out = []
        for route in node.routable_ips:
            try:
                addrs = AddrSet.parse(route)
            except ValueError:
                continue
            if route in ("0.0.0.0/0", "::/0"):
                # Exit routes are approved by autoApprovers.exitNode only, as with Tailscale.
                approvers = pol.auto_exit
            else:
                approvers = tuple(
                    a for prefix, aliases in pol.auto_routes if prefix.issuperset(addrs)
                    for a in aliases
                )
            if any(r.contains_node(a, info) for a in approvers):
                out.append(route)
        return out


def _owns(pol: Policy, r: Resolver, user: PolicyUser, tag: str, seen: set[str]) -> bool:
    if tag in seen:
        return False
    seen.add(tag)
    for owner in pol.tag_owners.get(tag, ()):
        if owner.kind == "tag":
            if _owns(pol, r, user, owner.name, seen):
                return True
            continue
        users = r.user_ids(owner)
        if users is not None and user.id in users:
            return True
        if owner.name == "autogroup:admin":
            return True
    return False


__all__ = ["PolicyError", "TailscalePolicyEngine"]
