"""Who sees whom per class of nodes, as bitsets; and which nodes a new policy concerns.

Visibility depends only on which grants a node is a source or destination of (and, under
``autogroup:self``, on its user): nodes alike in that form one class and share one peer set, an
int bitset over the engine's node slots (``meshscale.bitset``) computed once per class. At
10,000 nodes in a company-like tailnet there are a few hundred classes where there were 10,000
Python sets.

``policy_affected`` compares two compilations of policies over the same tailnet: a node's
filter, visible peers and routes depend only on the grants it belongs to, in their order, so a
policy change concerns the members of grants that were added, removed or changed; the other
nodes keep every output. Changes the comparison does not follow (SSH rules, nodeAttrs,
autoApprovers, groups or hosts under SSH or nodeAttrs) concern everyone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from difflib import SequenceMatcher
from typing import Any

from meshscale import bitset
from meshscale.plugins.policy.compile import CompiledGrant
from meshscale.plugins.policy.model import Grant, Policy
from meshscale.plugins.policy.tailnet import Tailnet
from meshscale.policy import Affected


class Visibility:
    """Per-class peer bitsets over one compilation; ``clear()`` after any membership change."""

    def __init__(self, grants: Sequence[CompiledGrant], tailnet: Tailnet,
                 slots: bitset.Slots) -> None:
        self.grants = grants
        self.tailnet = tailnet
        self.slots = slots  # node ID -> bit (the engine's, shared with the mapper)
        self._self_grants = [k for k, g in enumerate(grants) if g.self_dst]
        self._sides: dict[tuple[int, bool], int] = {}  # (grant, source side) -> members
        self._classes: dict[tuple[Any, ...], int] = {}

    def clear(self) -> None:
        self._sides.clear()
        self._classes.clear()

    def _side(self, k: int, src: bool) -> int:
        bits = self._sides.get((k, src))
        if bits is None:
            g = self.grants[k]
            bits = self._sides[(k, src)] = self.slots.of(g.src_nodes if src else g.dst_nodes)
        return bits

    def bits(self, node_id: int) -> int | None:
        """The node's visible peers (it may be among them: callers mask it); None: all."""
        n = self.tailnet.nodes.get(node_id)
        if n is None:
            return 0
        src: list[int] = []
        dst: list[int] = []
        for k, g in enumerate(self.grants):
            if node_id in g.src_nodes:
                if g.dst_all:
                    return None
                src.append(k)
            if node_id in g.dst_nodes:
                if g.src_all:
                    return None
                dst.append(k)
        user = n.node.user_id
        if n.tagged or user is None or not any(k in src for k in self._self_grants):
            user = None
        key = (tuple(src), tuple(dst), user)
        hit = self._classes.get(key)
        if hit is None:
            bits = 0
            for k in src:
                bits |= self._side(k, False)
            for k in dst:
                bits |= self._side(k, True)
            if user is not None:
                bits |= self.slots.of(self.tailnet.nodes_by_user.get(user, ()))
            hit = self._classes[key] = bits
        return hit


def _grant_key(g: CompiledGrant) -> str:
    # Everything a grant's outputs depend on but its location in the file (an edit above it
    # moves it): the parsed grant and who is on each side.
    gr = g.grant
    return repr((gr.src, gr.dst, gr.ip, gr.app, gr.via, sorted(g.src_nodes),
                 sorted(g.dst_nodes)))


def _unlocated(policy: Policy) -> tuple[Any, ...]:
    """The parts of a policy other than grants that shape per-node outputs, locations
    dropped; when SSH rules or nodeAttrs exist they resolve groups and hosts too."""
    resolving = (policy.groups, policy.hosts) if policy.ssh or policy.node_attrs else ()
    return (policy.has_rules, policy.randomize_client_port,
            tuple(replace(r, loc="") for r in policy.ssh),
            tuple(replace(a, loc="") for a in policy.node_attrs),
            policy.auto_routes, policy.auto_exit, resolving)


def policy_affected(old: Policy, old_grants: Sequence[CompiledGrant], new: Policy,
                    new_grants: Sequence[CompiledGrant], tailnet: Tailnet) -> Affected:
    """The nodes whose outputs may differ between two compilations over ``tailnet``."""
    if repr(_unlocated(old)) != repr(_unlocated(new)):
        return Affected.all()
    a = [_grant_key(g) for g in old_grants]
    b = [_grant_key(g) for g in new_grants]
    changed: list[CompiledGrant] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            changed.extend(old_grants[i1:i2])
            changed.extend(new_grants[j1:j2])
    nodes: set[int] = set()
    for g in changed:
        if g.src_all or g.dst_all:
            return Affected.all()
        nodes |= g.src_nodes | g.dst_nodes
        if g.self_dst:
            for i in g.src_nodes:
                info = tailnet.nodes.get(i)
                if info is not None and info.node.user_id is not None:
                    nodes |= tailnet.nodes_by_user.get(info.node.user_id, set())
    return Affected(nodes=frozenset(nodes))


def _sides(g: Grant) -> tuple[object, ...]:
    """What decides a grant's members: its aliases (and ``via``), not its ports or caps."""
    return (g.src, g.dst, g.via)


def carry_members(old: Policy, old_grants: Sequence[CompiledGrant], new: Policy,
                  new_grants: list[CompiledGrant]) -> list[CompiledGrant]:
    """Copy members from the old compilation (over the same tailnet) to new grants with the
    same sides, when groups and hosts are as before; return the grants still to be placed
    (``new_grants`` itself when nothing could be carried). At 10,000 nodes testing every node
    against every grant is most of a policy change."""
    if (old.groups, old.hosts) != (new.groups, new.hosts):
        return new_grants
    members = {_sides(g.grant): g for g in old_grants}
    fresh = []
    for g in new_grants:
        prev = members.get(_sides(g.grant))
        if prev is None:
            fresh.append(g)
        else:
            g.carry(prev)
    return fresh
