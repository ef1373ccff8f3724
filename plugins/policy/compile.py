"""Grants compiled against the tailnet: who is on each side, and each node's PacketFilter.

A ``CompiledGrant`` keeps the set of nodes on its source and destination side (for peer
visibility) and caches its SrcIPs. When one node changes, only its membership is re-tested and
only the caches of grants it belongs to are dropped; nothing is recompiled wholesale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshscale.plugins.policy.addrset import INTERNET, AddrSet
from meshscale.plugins.policy.model import Alias, Grant, IPSpec
from meshscale.plugins.policy.render import SrcList
from meshscale.plugins.policy.resolve import Resolver
from meshscale.plugins.policy.tailnet import NodeInfo

# Capabilities whose grant implies a reverse capability for the sources (Tailscale adds these).
COMPANION_CAPS = {
    "tailscale.com/cap/drive": "tailscale.com/cap/drive-sharer",
    "tailscale.com/cap/relay": "tailscale.com/cap/relay-target",
}

Rule = dict[str, Any]


@dataclass(slots=True)
class CompiledGrant:
    grant: Grant
    self_dst: bool  # has autogroup:self among its destinations
    src_all: bool  # "*" (or danger-all) source: every node is a source
    dst_all: bool  # "*" destination
    danger_all: bool
    src_nodes: set[int] = field(default_factory=set)
    dst_nodes: set[int] = field(default_factory=set)  # non-self destinations
    _src_addrs: AddrSet | None = None
    _src_strings: SrcList | None = None
    # autogroup:self: user id -> the SrcIPs of that user's source devices, shared by all of
    # the user's devices (dropped with the other caches whenever a member changes).
    _self_src: dict[int, SrcList] = field(default_factory=dict)

    @staticmethod
    def of(grant: Grant) -> CompiledGrant:
        return CompiledGrant(
            grant=grant,
            self_dst=any(a.name == "autogroup:self" for a in grant.dst),
            src_all=any(a.kind == "*" or a.name == "autogroup:danger-all" for a in grant.src),
            dst_all=any(a.kind == "*" for a in grant.dst) and not grant.via,
            danger_all=any(a.name == "autogroup:danger-all" for a in grant.src),
        )

    def carry(self, prev: CompiledGrant) -> None:
        """Take the members and rendered sources of ``prev``, the same sides compiled over the
        same tailnet, groups and hosts (views.carry_members): what depends only on the
        members stays valid, and nodes keep sharing the same SrcIPs objects."""
        self.src_nodes, self.dst_nodes = set(prev.src_nodes), set(prev.dst_nodes)
        self._src_addrs, self._src_strings = prev._src_addrs, prev._src_strings
        self._self_src = dict(prev._self_src)

    def invalidate(self) -> None:
        self._src_addrs = None
        self._src_strings = None
        self._self_src.clear()

    def src_addrs(self, r: Resolver) -> AddrSet:
        if self._src_addrs is None:
            self._src_addrs = r.addrs(self.grant.src)
        return self._src_addrs

    def src_strings(self, r: Resolver) -> SrcList:
        # One object per grant until its members change: its JSON is made once (render.py).
        if self._src_strings is None:
            self._src_strings = SrcList(["*"] if self.danger_all
                                        else self.src_addrs(r).strings())
        return self._src_strings

    # -- membership -------------------------------------------------------------------------

    def in_src(self, r: Resolver, n: NodeInfo) -> bool:
        return self.src_all or any(r.contains_node(a, n, routes=True) for a in self.grant.src)

    def in_dst(self, r: Resolver, n: NodeInfo) -> bool:
        if self.grant.via:
            return self._via_dsts(r, n) != []
        return any(
            r.contains_node(a, n, routes=True) for a in self.grant.dst if a.name != "autogroup:self"
        )

    def update(self, r: Resolver, n: NodeInfo | None, node_id: int) -> bool:
        """Re-test one node's membership; True when this grant's outputs may have changed."""
        was = node_id in self.src_nodes or node_id in self.dst_nodes
        self.src_nodes.discard(node_id)
        self.dst_nodes.discard(node_id)
        now = False
        if n is not None:
            if self.in_src(r, n):
                self.src_nodes.add(node_id)
                now = True
            if self.in_dst(r, n):
                self.dst_nodes.add(node_id)
                now = True
        if was or now:
            self.invalidate()
        return was or now or self.self_dst

    def covers_dst(self, target: AddrSet, *, via: bool = False) -> bool:
        """Does a destination of this grant reach into the address range ``target``?
        Grants with ``via`` count only when asked for (``via``)."""
        if bool(self.grant.via) != via:
            return False
        for a in self.grant.dst:
            if a.kind == "*":
                return True
            if a.kind in ("host", "prefix") and a.addrs.overlaps(target):
                return True
            if a.name == "autogroup:internet" and INTERNET.overlaps(target):
                return True
        return False

    # -- per-node rules -----------------------------------------------------------------------

    def _via_dsts(self, r: Resolver, n: NodeInfo) -> list[str]:
        if not any(t in n.node.tags for t in self.grant.via):
            return []
        out: list[str] = []
        for a in self.grant.dst:
            if a.name == "autogroup:internet" and n.is_exit:
                out.extend(INTERNET.strings())
            elif a.kind in ("host", "prefix") and n.routes.overlaps(a.addrs):
                out.append(a.name if "/" in a.name else a.addrs.strings()[0])
        return out

    def dst_entries(self, r: Resolver, n: NodeInfo) -> list[str]:
        """The destination IPs of this grant that concern node ``n`` (PacketFilter DstPorts)."""
        if self.grant.via:
            return self._via_dsts(r, n)
        out: list[str] = []
        for a in self.grant.dst:
            if a.kind == "*":
                out.append("*")
            elif a.kind in ("host", "prefix"):
                if (
                    n.addrs.overlaps(a.addrs)
                    or n.routes.overlaps(a.addrs)
                    or (n.is_exit and INTERNET.issuperset(a.addrs))
                ):
                    out.extend(_literal_strings(a))
            elif a.name == "autogroup:internet":
                if n.is_exit:
                    out.extend(INTERNET.strings())
            elif a.name != "autogroup:self" and r.is_identity(a, n):
                out.extend(n.ips)
        return out

    def cap_dsts(self, r: Resolver, a: Alias, n: NodeInfo) -> list[str]:
        """CapGrant Dsts of destination alias ``a`` narrowed to node ``n``."""
        out: list[str] = []
        if a.kind in ("host", "prefix"):
            for ip in n.ips:
                if a.addrs.contains_ip(ip):
                    out.append(_host_prefix(ip))
            if n.routes.overlaps(a.addrs):
                out.extend(a.addrs.prefixes())
        elif a.kind == "*" or r.is_identity(a, n):
            out.extend(_host_prefix(ip) for ip in n.ips)
        return sorted(set(out))

    def rules_for(self, r: Resolver, n: NodeInfo) -> list[Rule]:
        """This grant's (unmerged) PacketFilter rules for node ``n``."""
        g = self.grant
        rules: list[Rule] = []
        if not g.src or not g.dst:
            return rules
        if n.id in self.dst_nodes or (self.dst_all and not g.via):
            src: list[str] = self.src_strings(r)
            if src or g.app:
                entries = self.dst_entries(r, n)
                if entries and src:
                    rules.extend(_port_rules(src, entries, g.ip))
                if g.app and not g.via:
                    grants = []
                    for a in g.dst:
                        if a.name == "autogroup:self":
                            continue
                        dsts = self.cap_dsts(r, a, n)
                        if dsts:
                            grants.append({"Dsts": dsts, "CapMap": dict(g.app)})
                    if grants:
                        rules.append({"SrcIPs": src, "CapGrant": grants})
        if self.self_dst and not n.tagged and n.node.user_id is not None:
            same = [
                r.tailnet.nodes[i] for i in r.tailnet.nodes_by_user.get(n.node.user_id, ())
            ]
            src = self._self_src_of(n.node.user_id, same)
            if src:
                rules.extend(_port_rules(src, list(n.ips), g.ip))
                if g.app:
                    rules.append(
                        {
                            "SrcIPs": src,
                            "CapGrant": [
                                {"Dsts": [_host_prefix(ip) for ip in n.ips], "CapMap": dict(g.app)}
                            ],
                        }
                    )
                    rules.extend(self._companions(r, n, [ip for m in same for ip in m.ips]))
        if g.app and n.id in self.src_nodes and not g.via:
            rules.extend(self._companion_rules(r, n))
        return rules

    def _self_src_of(self, user_id: int, same: list[NodeInfo]) -> SrcList:
        src = self._self_src.get(user_id)
        if src is None:
            srcs = [m for m in same if m.id in self.src_nodes or self.src_all]
            src = self._self_src[user_id] = SrcList(
                AddrSet.union_all(m.addrs for m in srcs).strings() if srcs else [])
        return src

    def _companion_rules(self, r: Resolver, n: NodeInfo) -> list[Rule]:
        """Reverse rules for companion capabilities, delivered to the grant's sources."""
        if not any(name in COMPANION_CAPS for name, _ in self.grant.app):
            return []
        # "*" stands for every tailnet address plus every approved subnet route here too.
        dsts = tuple(a for a in self.grant.dst if a.name != "autogroup:self")
        ips = r.addrs(dsts).strings()
        return self._companions(r, n, ips)

    def _companions(self, r: Resolver, n: NodeInfo, src_ips: list[str]) -> list[Rule]:
        out: list[Rule] = []
        if not src_ips:
            return out
        dsts = [_host_prefix(ip) for ip in n.ips]
        for name, _ in sorted(self.grant.app):
            companion = COMPANION_CAPS.get(name)
            if companion:
                out.append(
                    {"SrcIPs": src_ips, "CapGrant": [{"Dsts": dsts, "CapMap": {companion: None}}]}
                )
        return out


def _host_prefix(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _literal_strings(a: Alias) -> list[str]:
    if "/" in a.name or a.kind == "host":
        return a.addrs.strings() if a.addrs.is_single_ip() else a.addrs.prefixes()
    return a.addrs.strings()


def _port_rules(src: list[str], entries: list[str], specs: tuple[IPSpec, ...]) -> list[Rule]:
    rules: list[Rule] = []
    for spec in specs:
        ports = [
            {"IP": e, "Ports": {"First": lo, "Last": hi}} for e in entries for lo, hi in spec.ports
        ]
        rule: Rule = {"SrcIPs": src, "DstPorts": ports}
        if spec.protos:
            rule["IPProto"] = list(spec.protos)
        rules.append(rule)
    return rules


def merge_rules(rules: list[Rule]) -> list[Rule]:
    """Merge rules with the same SrcIPs and IPProto (DstPorts concatenated, as Tailscale does);
    CapGrant rules are never merged."""
    out: list[Rule] = []
    index: dict[tuple[tuple[str, ...], tuple[int, ...]], int] = {}
    for rule in rules:
        if "CapGrant" in rule:
            out.append(rule)
            continue
        key = (tuple(rule["SrcIPs"]), tuple(rule.get("IPProto", ())))
        if key in index:
            merged = out[index[key]]
            merged["DstPorts"] = merged["DstPorts"] + rule["DstPorts"]
        else:
            index[key] = len(out)
            out.append(dict(rule))
    return out
