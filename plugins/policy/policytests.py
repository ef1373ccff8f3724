"""The policy's own ``tests`` and ``sshTests``: a policy whose tests fail is refused.

A test describes one connection attempt (one source, one host, one port); shapes that are not
one attempt (port ranges, CIDRs, autogroup:internet) fail the test, as with Tailscale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshscale.errors import PolicyError
from meshscale.plugins.policy.addrset import ALL, INTERNET, TAILNET, AddrSet
from meshscale.plugins.policy.aliases import AliasScope
from meshscale.plugins.policy.compile import CompiledGrant
from meshscale.plugins.policy.model import Alias, Policy, PolicyTest, SSHTest
from meshscale.plugins.policy.resolve import Resolver
from meshscale.plugins.policy.tailnet import NodeInfo
from meshscale.plugins.policy.values import parse_ports, parse_proto, split_host_port

DEFAULT_PROTOS = frozenset({1, 6, 17, 58})


class _Fail(Exception):
    pass


def _alias(policy: Policy, text: str) -> Alias:
    parser = AliasScope(None)
    parser.groups = policy.groups
    parser.hosts = policy.hosts
    parser.tags = dict(policy.tag_owners)
    try:
        return parser.alias(text, "")
    except PolicyError as exc:
        raise _Fail(exc.reason) from None


def _dst_addrs(r: Resolver, a: Alias) -> AddrSet:
    if a.kind in ("host", "prefix"):
        return a.addrs
    return AddrSet.union_all(n.addrs for n in r.tailnet.nodes.values() if r.is_identity(a, n))


def run_tests(policy: Policy, r: Resolver, grants: list[CompiledGrant]) -> None:
    for test in policy.tests:
        try:
            _run_test(policy, r, grants, test)
        except _Fail as exc:
            raise PolicyError(test.loc, f"test(s) failed: {exc}") from None


def _run_test(policy: Policy, r: Resolver, grants: list[CompiledGrant], t: PolicyTest) -> None:
    if not t.src.strip():
        raise _Fail("src must not be empty")
    if not t.accept and not t.deny:
        raise _Fail('a test needs "accept" or "deny"')
    protos = set(parse_proto(t.proto, "proto")) if t.proto else set(DEFAULT_PROTOS)
    if t.proto and not protos <= {6, 17, 132}:
        raise _Fail("test protocol must be tcp, udp, sctp, or empty")
    src_alias = _alias(policy, t.src)
    src = r.addrs((src_alias,)) if src_alias.kind != "*" else TAILNET
    if not src:
        raise _Fail(f"source {t.src!r} resolved to no addresses")
    for want, dsts in ((True, t.accept), (False, t.deny)):
        for dst in dsts:
            got = _allowed(
                policy=policy, r=r, grants=grants, src=src, dst=dst, protos=protos
            )
            if got != want:
                raise _Fail(f"{t.src} -> {dst}: expected {'ALLOWED' if want else 'DENIED'}")


def _allowed(
    *,
    policy: Policy,
    r: Resolver,
    grants: list[CompiledGrant],
    src: AddrSet,
    dst: str,
    protos: set[int],
) -> bool:
    try:
        host, ports_text = split_host_port(dst.strip())
        ports = parse_ports(ports_text)
    except ValueError as exc:
        raise _Fail(f"invalid destination {dst!r}: {exc}") from None
    if len(ports) != 1 or ports[0][0] != ports[0][1]:
        raise _Fail(f"{dst!r}: test destination port must be a single port")
    port = ports[0][0]
    a = _alias(policy, host)
    if a.name in ("autogroup:internet", "autogroup:self") or a.kind == "*":
        raise _Fail(f"{dst!r}: not a single host")
    if a.kind in ("host", "prefix") and not a.addrs.is_single_ip():
        raise _Fail(f"{dst!r}: test destination must be a single host, not a CIDR range")
    target = _dst_addrs(r, a)
    if not target:
        raise _Fail(f"{dst!r} resolved to no addresses")
    if not policy.has_rules:
        return True
    # Every source address must be allowed (a partial allow is a deny).
    for piece in src.prefixes():
        s = AddrSet.parse(piece)
        if not any(_grant_allows(r, g, s, target, port=port, protos=protos) for g in grants):
            return False
    return True


def _grant_allows(
    r: Resolver, g: CompiledGrant, src: AddrSet, dst: AddrSet, *, port: int, protos: set[int]
) -> bool:
    if g.grant.via or not g.grant.ip:
        return False
    if not (g.danger_all or g.src_addrs(r).overlaps(src)):
        return False
    spec_ok = any(
        (not spec.protos or protos & set(spec.protos))
        and any(lo <= port <= hi for lo, hi in spec.ports)
        for spec in g.grant.ip
    )
    if not spec_ok:
        return False
    for a in g.grant.dst:
        if a.kind == "*":
            return True
        if a.name == "autogroup:internet":
            covered = INTERNET
        elif a.name == "autogroup:self":
            users = {
                n.node.user_id for n in r.tailnet.nodes.values()
                if not n.tagged and n.addrs.overlaps(src)
            }
            covered = AddrSet.union_all(
                n.addrs for n in r.tailnet.nodes.values()
                if not n.tagged and n.node.user_id in users
            )
        else:
            covered = _dst_addrs(r, a)
        if covered.overlaps(dst):
            return True
    return False


def run_ssh_tests(
    policy: Policy,
    r: Resolver,
    ssh_rules_for: Callable[[NodeInfo], list[dict[str, Any]] | None],
) -> None:
    for t in policy.ssh_tests:
        try:
            _run_ssh_test(policy, r, ssh_rules_for, t)
        except _Fail as exc:
            raise PolicyError(t.loc, f"test(s) failed: {exc}") from None


def _run_ssh_test(
    policy: Policy,
    r: Resolver,
    ssh_rules_for: Callable[[NodeInfo], list[dict[str, Any]] | None],
    t: SSHTest,
) -> None:
    if not t.src:
        raise _Fail("src must not be empty")
    if not t.dst:
        raise _Fail("dst must not be empty")
    if not (t.accept or t.deny or t.check):
        raise _Fail("no accept, deny or check assertions")
    src_alias = _alias(policy, t.src)
    src_ips = [ip for n in r.tailnet.nodes.values() for ip in n.ips
               if r.addrs((src_alias,)).contains_ip(ip)]
    if src_alias.kind in ("host", "prefix"):
        src_ips = [s for s in src_alias.addrs.strings()]
    if not src_ips:
        raise _Fail(f"source {t.src!r} resolved to no addresses")
    src_user = r.tailnet.user_for(src_alias.name) if src_alias.kind == "user" else None
    dst_nodes: dict[int, NodeInfo] = {}
    for d in t.dst:
        if ":" in d and not d.startswith(("tag:", "autogroup:", "group:", "user:")):
            raise _Fail(f"dst {d!r}: not a single SSH host")  # bare IPv6 is refused
        if d == "autogroup:self":
            matched = [n for n in r.tailnet.nodes.values()
                       if not n.tagged and src_user is not None and n.node.user_id == src_user]
        else:
            a = _alias(policy, d)
            addrs = _dst_addrs(r, a)
            matched = [n for n in r.tailnet.nodes.values() if n.addrs.overlaps(addrs)]
        if not matched:
            raise _Fail(f"dst {d!r} resolved to no nodes")
        dst_nodes.update((n.id, n) for n in matched)
    for kind, users in (("accept", t.accept), ("deny", t.deny), ("check", t.check)):
        for user in users:
            for n in dst_nodes.values():
                rules = ssh_rules_for(n) or []
                hits = [_reach(rules, ip, user) for ip in src_ips]
                if kind == "accept" and not all(a for a, _ in hits):
                    raise _Fail(f"{t.src}/{user} -> {n.node.hostname}: expected ALLOWED")
                if kind == "deny" and any(a for a, _ in hits):
                    raise _Fail(f"{t.src}/{user} -> {n.node.hostname}: expected DENIED")
                if kind == "check" and not all(c for _, c in hits):
                    raise _Fail(f"{t.src}/{user} -> {n.node.hostname}: expected check")


def _reach(rules: list[dict[str, Any]], ip: str, user: str) -> tuple[bool, bool]:
    """(allowed, via check) for ``user`` from ``ip``: the first matching rule decides."""
    if not user:
        return False, False
    target = AddrSet.parse(ip)
    for rule in rules:
        if not any(AddrSet.parse(p["nodeIP"]) == target for p in rule["principals"]):
            continue
        users: dict[str, str] = rule["sshUsers"]
        if user in users:
            ok = users[user] != ""
        elif user == "root":
            ok = False
        else:
            ok = users.get("*", "") != ""
        if ok:
            return True, "holdAndDelegate" in rule["action"]
    return False, False


__all__ = ["ALL", "run_ssh_tests", "run_tests"]
