"""SSH rules compiled to each node's ``SSHPolicy`` (the shape Tailscale's control plane sends).

Per rule, the expensive part (which source nodes, grouped by user; which nodes are
destinations) is computed once and cached until the tailnet changes; a node's policy is then
assembled from those pieces.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshscale.plugins.policy.addrset import AddrSet
from meshscale.plugins.policy.model import SSHRule
from meshscale.plugins.policy.resolve import Resolver
from meshscale.plugins.policy.tailnet import NodeInfo
from meshscale.plugins.policy.values import parse_duration

ACCEPT_ACTION: dict[str, Any] = {
    "accept": True,
    "allowAgentForwarding": True,
    "allowLocalPortForwarding": True,
    "allowRemotePortForwarding": True,
}
CHECK_PATH = "/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"
LOCALPART = "localpart:*@"
# Tailscale's default when a check rule names no checkPeriod.
DEFAULT_CHECK_PERIOD = 12 * 3600.0


def check_period_seconds(rule: SSHRule) -> float:
    """How long a check of this rule stays valid: 0 for ``"always"`` (every connection checks).

    The period never reaches the client (the captures of Tailscale's control plane render every
    check rule as the same ``holdAndDelegate`` URL); the server applies it when the client
    calls that URL (``SSHCompiler.check_period``)."""
    if rule.check_period is None:
        return DEFAULT_CHECK_PERIOD
    if rule.check_period == "always":
        return 0.0
    return max(0.0, parse_duration(rule.check_period))


def _sorted_ips(ips: list[str]) -> list[str]:
    addrs = sorted({ipaddress.ip_address(i) for i in ips}, key=lambda a: (a.version, int(a)))
    return [str(a) for a in addrs]


def _principals(ips: list[str]) -> list[dict[str, str]]:
    return [{"nodeIP": ip} for ip in ips]


@dataclass(slots=True)
class _Prepared:
    src: AddrSet
    user_ids: list[int]  # source users, sorted
    by_user: dict[int, list[str]]  # user id -> sorted IPs of their untagged source nodes
    tagged: list[str]  # tagged source IPs, once per tag the node carries (as Tailscale does)
    dst_nodes: set[int]
    localparts: dict[int, str]  # user id -> local part, for localpart:*@domain users
    user_map: dict[str, str]
    action: dict[str, Any]


class SSHCompiler:
    def __init__(self, rules: tuple[SSHRule, ...], control_url: str) -> None:
        self.rules = rules
        self.control_url = control_url.rstrip("/")
        self._prepared: list[_Prepared | None] | None = None
        self._stale: set[int] = set()

    def invalidate(self, rules: set[int] | None = None) -> None:
        """Drop cached rule data (all, or only the rules at these indexes)."""
        if rules is None or self._prepared is None:
            self._prepared = None
            return
        for i in rules:
            self._prepared[i] = None
        self._stale |= rules

    def _prepare(self, r: Resolver) -> list[_Prepared | None]:
        if self._prepared is None:
            self._prepared = [self._prepare_rule(r, rule) for rule in self.rules]
            self._stale = set()
        elif self._stale:
            for i in self._stale:
                self._prepared[i] = self._prepare_rule(r, self.rules[i])
            self._stale = set()
        return self._prepared

    def touched_by(self, r: Resolver, nodes: list[NodeInfo]) -> tuple[set[int], set[int]]:
        """Rule indexes whose sources, and whose destinations, include any of ``nodes``."""
        as_src: set[int] = set()
        as_dst: set[int] = set()
        for i, rule in enumerate(self.rules):
            for n in nodes:
                if any(r.contains_node(a, n) for a in rule.src):
                    as_src.add(i)
                if any(a.name == "autogroup:self" or r.is_identity(a, n) for a in rule.dst):
                    as_dst.add(i)
        return as_src, as_dst

    def destinations(self, r: Resolver, index: int, source: NodeInfo) -> set[int]:
        """Nodes whose SSHPolicy lists ``source`` as a principal through rule ``index``."""
        rule = self.rules[index]
        out: set[int] = set()
        if any(a.name == "autogroup:self" for a in rule.dst) and source.node.user_id is not None:
            out |= r.tailnet.nodes_by_user.get(source.node.user_id, set())
        others = [a for a in rule.dst if a.name != "autogroup:self"]
        if others:
            out |= {n.id for n in r.tailnet.nodes.values()
                    if any(r.is_identity(a, n) for a in others)}
        return out


    def _prepare_rule(self, r: Resolver, rule: SSHRule) -> _Prepared | None:
        src = r.addrs(rule.src)
        if not src:
            return None
        tn = r.tailnet
        by_user: dict[int, list[str]] = {}
        tagged: list[str] = []
        for n in sorted(tn.nodes.values(), key=lambda n: n.id):
            if not n.addrs.overlaps(src):
                continue
            if n.tagged:
                for _ in n.node.tags:
                    tagged.extend(n.ips)
            elif n.node.user_id is not None:
                by_user.setdefault(n.node.user_id, []).extend(n.ips)
        by_user = {u: _sorted_ips(ips) for u, ips in by_user.items()}
        dst_nodes = {
            n.id
            for n in tn.nodes.values()
            if any(a.name != "autogroup:self" and r.is_identity(a, n) for a in rule.dst)
        }
        users = set(rule.users)
        user_map: dict[str, str] = {}
        if "autogroup:nonroot" in users:
            user_map["*"] = "="
        user_map["root"] = "root" if "root" in users else ""
        localparts: dict[int, str] = {}
        for u in rule.users:
            if u in ("root", "autogroup:nonroot"):
                continue
            if u.startswith(LOCALPART) and len(u) > len(LOCALPART):
                domain = u[len(LOCALPART) :].lower()
                for user in tn.users.values():
                    local, at, dom = user.email.rpartition("@")
                    if at and dom.lower() == domain:
                        localparts[user.id] = local
                continue
            user_map[u] = u
        if rule.action == "accept":
            action = dict(ACCEPT_ACTION)
        else:
            action = {"holdAndDelegate": self.control_url + CHECK_PATH}
        return _Prepared(src, sorted(by_user), by_user, tagged, dst_nodes, localparts, user_map,
                         action)

    def policy_for(self, r: Resolver, n: NodeInfo) -> list[dict[str, Any]] | None:
        if not self.rules:
            return None
        out: list[dict[str, Any]] = []
        for rule, prep in zip(self.rules, self._prepare(r), strict=True):
            if prep is not None:
                out.extend(self._rules_for(rule, prep, n))
        # Tailscale evaluates the most restrictive first: check rules before accept rules.
        out.sort(key=lambda x: "holdAndDelegate" not in x["action"])
        return out

    def _rules_for(self, rule: SSHRule, p: _Prepared, n: NodeInfo) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def emit(principals: list[str], uid: int | None) -> None:
            base: dict[str, Any] = {
                "principals": _principals(principals),
                "sshUsers": p.user_map,
                "action": p.action,
            }
            if rule.accept_env:
                base["acceptEnv"] = list(rule.accept_env)
            out.append(base)
            if uid is not None and uid in p.localparts:
                lp = p.localparts[uid]
                extra = dict(base, sshUsers={lp: lp})
                out.append(extra)

        uid = n.node.user_id if not n.tagged else None
        self_dst = any(a.name == "autogroup:self" for a in rule.dst)
        if self_dst and uid is not None and p.by_user.get(uid):
            emit(p.by_user[uid], uid)
        has_other = any(a.name != "autogroup:self" for a in rule.dst)
        if not has_other:
            return out
        if n.id in p.dst_nodes:
            if _canonical_localpart(rule):
                for u in p.user_ids:
                    emit(p.by_user[u], u)
                if p.tagged:
                    emit(p.tagged, None)
            else:
                everyone = [ip for u in p.user_ids for ip in p.by_user[u]] + p.tagged
                if everyone:
                    emit(everyone, None)
        elif _canonical_localpart(rule) and n.addrs.overlaps(p.src):
            # A source node with a localpart rule gets the rule scoped to itself (Tailscale).
            if n.tagged:
                emit(_sorted_ips(list(n.ips)), None)
            elif uid is not None and p.by_user.get(uid):
                emit(p.by_user[uid], uid)
        return out


    def check_period(self, r: Resolver, src_id: int, dst_id: int,
                     local_user: str) -> float | None:
        """The check period for ``src`` connecting to ``dst`` as ``local_user``, or None when no
        check rule of ``dst``'s SSHPolicy covers that connection.

        Evaluated on exactly what ``dst`` was sent (its rules, principals and sshUsers), so the
        answer is the server's, never a value from the URL. Every check rule renders the same
        URL, so when several match the shortest period wins (the most restrictive)."""
        src, dst = r.tailnet.nodes.get(src_id), r.tailnet.nodes.get(dst_id)
        if src is None or dst is None:
            return None
        periods: list[float] = []
        src_ips = set(src.ips)
        for rule, prep in zip(self.rules, self._prepare(r), strict=True):
            if rule.action != "check" or prep is None:
                continue
            for out in self._rules_for(rule, prep, dst):
                principals = {p["nodeIP"] for p in out["principals"]}
                if src_ips & principals and _maps_to(out["sshUsers"], local_user):
                    periods.append(check_period_seconds(rule))
                    break
        return min(periods) if periods else None


def _maps_to(users: dict[str, str], local_user: str) -> bool:
    """Can some requested SSH user map to ``local_user`` under ``sshUsers``? (tailssh: a key
    is the requested user, ``*`` any; the value the local user, ``=`` the same, ``""`` none.)"""
    if not local_user:
        return any(users.values())
    if users.get(local_user) == "":
        return False  # explicitly refused (root without "root" in users)
    return any(v == local_user or (v == "=" and k == "*") for k, v in users.items())


def _canonical_localpart(rule: SSHRule) -> bool:
    return any(u.startswith(LOCALPART) and len(u) > len(LOCALPART) for u in rule.users)
