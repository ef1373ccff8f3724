"""Policy text -> validated ``Policy``. Every refusal is a PolicyError naming where it happened.

The rules follow what Tailscale's control plane accepts and refuses (the conformance corpus is
the reference); messages reuse its wording where it has one. This module holds the rule sections
(acls, grants, ssh, nodeAttrs, autoApprovers, tests); the declarations they refer to (groups,
hosts, tagOwners) and alias resolution are ``aliases.py``; the leaf values (ports, protocols,
durations, prefixes) are ``values.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from meshscale.errors import PolicyError
from meshscale.plugins.policy import hujson
from meshscale.plugins.policy.addrset import AddrSet
from meshscale.plugins.policy.aliases import AliasScope
from meshscale.plugins.policy.model import (
    ALL_PORTS,
    Alias,
    Grant,
    IPSpec,
    NodeAttr,
    Policy,
    PolicyTest,
    PortRange,
    SSHRule,
    SSHTest,
)
from meshscale.plugins.policy.values import (
    PORT_PROTOCOLS,
    as_list,
    as_str,
    obj_fields,
    parse_duration,
    parse_ip_spec,
    parse_ports,
    parse_prefix,
    parse_proto,
    split_host_port,
    str_list,
)

NODEATTR_AUTOGROUPS = frozenset({"member", "tagged", "admin", "owner"})
# tailscale.com capabilities users may grant themselves; the rest are the control plane's own.
TAILSCALE_CAP_ALLOWLIST = frozenset(
    {
        "tailscale.com/cap/drive", "tailscale.com/cap/relay", "tailscale.com/cap/webui",
        "tailscale.com/cap/kubernetes", "tailscale.com/cap/tsidp", "tailscale.com/cap/secrets",
    }
)
RESERVED_POOLS = AddrSet.of(["100.100.100.0/24", "100.115.92.0/23"])
TOP_LEVEL = {
    "groups", "hosts", "tagowners", "acls", "grants", "ssh", "nodeattrs", "autoapprovers",
    "tests", "sshtests", "randomizeclientport",
}


class _Parser(AliasScope):
    """The rule sections (acls, grants, ssh, nodeAttrs, autoApprovers, tests), after the
    declarations (``AliasScope``) they refer to."""

    def __init__(self, raw: dict[str, Any], domains: frozenset[str] | None) -> None:
        self.raw = raw
        super().__init__(domains)

    # -- sections -----------------------------------------------------------------------------

    def parse(self) -> Policy:
        top = obj_fields(self.raw, "", TOP_LEVEL)
        self.parse_groups(top.get("groups"))
        self.parse_hosts(top.get("hosts"))
        self.parse_tag_owners(top.get("tagowners"))
        grants: list[Grant] = []
        acls = top.get("acls")
        for i, acl in enumerate(as_list(acls, "acls")):
            grants.extend(self.parse_acl(acl, f"acls[{i}]"))
        for i, grant in enumerate(as_list(top.get("grants"), "grants")):
            grants.append(self.parse_grant(grant, f"grants[{i}]"))
        ssh = tuple(
            self.parse_ssh(rule, f"ssh[{i}]")
            for i, rule in enumerate(as_list(top.get("ssh"), "ssh"))
        )
        attrs = tuple(
            self.parse_node_attr(na, f"nodeAttrs[{i}]")
            for i, na in enumerate(as_list(top.get("nodeattrs"), "nodeAttrs"))
        )
        routes, exit_node = self.parse_auto_approvers(top.get("autoapprovers"))
        tests = tuple(
            self.parse_test(t, f"tests[{i}]")
            for i, t in enumerate(as_list(top.get("tests"), "tests"))
        )
        ssh_tests = tuple(
            self.parse_ssh_test(t, f"sshTests[{i}]")
            for i, t in enumerate(as_list(top.get("sshtests"), "sshTests"))
        )
        rcp = top.get("randomizeclientport", False)
        if not isinstance(rcp, bool):
            raise PolicyError("randomizeClientPort", "must be true or false")
        if top.get("acls") is None and top.get("grants") is None:
            # Without acls or grants Tailscale applies its default policy: all to all.
            all_ = Alias("*", "*")
            grants.append(Grant("(default)", (all_,), (all_,), (IPSpec((), ALL_PORTS),)))
        return Policy(
            groups=self.groups,
            hosts=self.hosts,
            host_text=self.host_text,
            tag_owners=self.tags,
            grants=tuple(grants),
            has_rules=True,
            ssh=ssh,
            node_attrs=attrs,
            auto_routes=routes,
            auto_exit=exit_node,
            tests=tests,
            ssh_tests=ssh_tests,
            randomize_client_port=rcp,
        )

    def parse_acl(self, value: Any, loc: str) -> list[Grant]:
        acl = obj_fields(value, loc, ("action", "src", "dst", "proto", "users", "ports"))
        if acl.get("action") != "accept":
            raise PolicyError(f"{loc}.action", f"action={acl.get('action')!r} is not supported")
        protos = parse_proto(as_str(acl.get("proto", ""), f"{loc}.proto"), f"{loc}.proto")
        src = self.aliases(acl.get("src"), f"{loc}.src", self.check_src)
        grants = []
        dsts: list[tuple[Alias, tuple[PortRange, ...], str]] = []
        for i, text in enumerate(str_list(acl.get("dst"), f"{loc}.dst")):
            dloc = f"{loc}.dst[{i}]"
            try:
                host, ports_text = split_host_port(text.strip())
            except ValueError as exc:
                raise PolicyError(dloc, f"dst={text!r}: {exc}") from None
            try:
                ports = parse_ports(ports_text)
            except ValueError as exc:
                raise PolicyError(dloc, f'dst="{host}": port range "{ports_text}": {exc}') from None
            a = self.alias(host, dloc)
            self.check_dst(a, dloc)
            if protos and protos[0] not in PORT_PROTOCOLS and ports != ALL_PORTS:
                raise PolicyError(dloc, 'protocol does not support specific ports, only "*"')
            dsts.append((a, ports, dloc))
        if any(a.name == "autogroup:self" for a, _, _ in dsts):
            self.check_self_sources(src, f"{loc}.src", allow_wildcard=True)
        for a, ports, dloc in dsts:
            grants.append(Grant(dloc, src, (a,), (IPSpec(protos, ports),)))
        return grants

    def check_self_sources(self, src: tuple[Alias, ...], loc: str, *, allow_wildcard: bool) -> None:
        for a in src:
            ok = a.kind in ("user", "group", "userdomain") or a.name == "autogroup:member"
            if a.kind == "*" and allow_wildcard:
                ok = True
            if not ok:
                raise PolicyError(
                    loc,
                    "autogroup:self can only be used with users, groups, or supported autogroups",
                )

    def parse_grant(self, value: Any, loc: str) -> Grant:
        g = obj_fields(value, loc, ("src", "dst", "ip", "app", "via", "srcposture"))
        src = self.aliases(g.get("src"), f"{loc}.src", self.check_src)
        dst = self.aliases(g.get("dst"), f"{loc}.dst", self.check_dst)
        for i, a in enumerate(dst):
            if a.kind == "prefix" and a.addrs.prefixes() in (["0.0.0.0/0"], ["::/0"]):
                raise PolicyError(
                    f"{loc}.dst[{i}]",
                    f'dst "{a.name}": to allow all IP addresses, use "*" or "autogroup:internet"',
                )
        ips: list[IPSpec] = []
        for i, text in enumerate(str_list(g.get("ip"), f"{loc}.ip")):
            ips.append(parse_ip_spec(text.strip(), f"{loc}.ip[{i}]"))
        app_raw = g.get("app")
        app: list[tuple[str, Any]] = []
        if app_raw is not None:
            if not isinstance(app_raw, dict):
                raise PolicyError(f"{loc}.app", "must be an object of capability -> list")
            for name, val in app_raw.items():
                cloc = f'{loc}.app["{name}"]'
                if "://" in name or "/" not in name:
                    raise PolicyError(cloc, "capability name must have the form {domain}/{path}")
                if name.startswith("tailscale.com/") and name not in TAILSCALE_CAP_ALLOWLIST:
                    raise PolicyError(
                        cloc, "capability name must not be in the tailscale.com domain"
                    )
                if not isinstance(val, list):
                    raise PolicyError(cloc, "must be a list of objects")
                app.append((name, val))
        if not ips and not app:
            raise PolicyError(loc, "ip and app can not both be empty")
        if app and any(a.name == "autogroup:internet" for a in dst):
            raise PolicyError(f"{loc}.dst", "cannot use app grants with autogroup:internet")
        via: list[str] = []
        for i, raw_tag in enumerate(str_list(g.get("via"), f"{loc}.via")):
            tag = raw_tag.strip()
            if not tag.startswith("tag:"):
                raise PolicyError(f"{loc}.via[{i}]", "via can only be a tag")
            if tag not in self.tags:
                raise PolicyError(f"{loc}.via[{i}]", f'tag "{tag}" not found')
            via.append(tag)
        if any(a.name == "autogroup:self" for a in dst):
            self.check_self_sources(src, f"{loc}.src", allow_wildcard=False)
        return Grant(loc, src, dst, tuple(ips), tuple(app), tuple(via))

    def parse_ssh(self, value: Any, loc: str) -> SSHRule:
        r = obj_fields(value, loc, ("action", "src", "dst", "users", "checkperiod", "acceptenv"))
        action = r.get("action")
        if action is None or (isinstance(action, str) and action.strip() == ""):
            raise PolicyError(f"{loc}.action", "action must be specified")
        if not isinstance(action, str) or action.strip() not in ("accept", "check"):
            raise PolicyError(f"{loc}.action", f"{action!r} is not a valid action")
        action = action.strip()
        users = [u.strip() for u in str_list(r.get("users"), f"{loc}.users")]
        if not users:
            raise PolicyError(f"{loc}.users", "users must be specified")
        for i, user in enumerate(users):
            if user in ("", "*"):
                raise PolicyError(f"{loc}.users[{i}]", f'user "{user}" is not valid')
            if user.startswith("localpart:*@") and user != "localpart:*@":
                self.check_domain(user[len("localpart:*@") :], f"{loc}.users[{i}]",
                                  "user:*@<domain>")
        env = str_list(r.get("acceptenv"), f"{loc}.acceptEnv")
        for i, e in enumerate(env):
            if e == "":
                raise PolicyError(f"{loc}.acceptEnv[{i}]", "acceptEnv values cannot be empty")
        period = r.get("checkperiod")
        if period is not None:
            if action != "check":
                raise PolicyError(f"{loc}.checkPeriod", 'checkPeriod is only valid with "check"')
            if not isinstance(period, str):
                raise PolicyError(f"{loc}.checkPeriod", "must be a duration string")
            if period != "always":
                try:
                    seconds = parse_duration(period)
                except ValueError as exc:
                    raise PolicyError(f"{loc}.checkPeriod", str(exc)) from None
                if seconds < 0:
                    raise PolicyError(
                        f"{loc}.checkPeriod", f"checkPeriod {period} must be a positive duration"
                    )
                if seconds > 168 * 3600:
                    raise PolicyError(f"{loc}.checkPeriod", f"checkPeriod {period} is above 168h")
        src = self.aliases(r.get("src"), f"{loc}.src", self.check_ssh_src)
        dst = self.aliases(r.get("dst"), f"{loc}.dst", self.check_ssh_dst)
        self.check_ssh_combination(src, dst, loc)
        return SSHRule(loc, action, src, dst, tuple(users), tuple(env), period)

    def check_ssh_combination(
        self, src: tuple[Alias, ...], dst: tuple[Alias, ...], loc: str
    ) -> None:
        tagged = any(a.kind == "tag" or a.name == "autogroup:tagged" for a in src)
        grouped = any(a.kind in ("group", "userdomain") or a.name == "autogroup:member"
                      for a in src)
        users = {a.name for a in src if a.kind == "user"}
        for a in dst:
            if a.kind == "user":
                if tagged:
                    raise PolicyError(f"{loc}.dst", "tags in SSH source cannot access user-owned "
                                      f"devices ({a.name}); use autogroup:tagged or tags")
                if grouped or users != {a.name}:
                    raise PolicyError(f"{loc}.dst", f"user destination {a.name!r} requires the "
                                      "source to be that same user; use autogroup:self")
            elif a.name == "autogroup:self" and tagged:
                raise PolicyError(
                    f"{loc}.dst",
                    "autogroup:self can only be used with users, groups, or supported autogroups",
                )
            elif a.name == "autogroup:member" and tagged:
                raise PolicyError(f"{loc}.dst", "tags in SSH source cannot access autogroup:member")

    def parse_node_attr(self, value: Any, loc: str) -> NodeAttr:
        na = obj_fields(value, loc, ("target", "attr", "ippool"))

        def check(a: Alias, aloc: str) -> None:
            if a.kind == "autogroup" and a.name[len("autogroup:") :] not in NODEATTR_AUTOGROUPS:
                raise PolicyError(aloc, f"{a.name} is not supported as a nodeAttrs target")

        targets = []
        for i, text in enumerate(str_list(na.get("target"), f"{loc}.target")):
            tloc = f"{loc}.target[{i}]"
            stripped = text.strip()
            # A bare word must be a host name; anything else is neither alias nor address.
            bare = not (
                stripped == "*" or "@" in stripped or ":" in stripped
                or stripped[:1].isdigit() or stripped in self.hosts
            )
            if bare and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stripped):
                raise PolicyError(tloc, f'"{stripped}": invalid address')
            a = self.alias(text, tloc)
            check(a, tloc)
            targets.append(a)
        attrs = tuple(a.strip() for a in str_list(na.get("attr"), f"{loc}.attr"))
        for i, text in enumerate(str_list(na.get("ippool"), f"{loc}.ipPool")):
            ploc = f"{loc}.ipPool[{i}]"
            try:
                pool = AddrSet.parse(text)
            except ValueError:
                raise PolicyError(ploc, f"invalid prefix {text!r}") from None
            if pool.overlaps(RESERVED_POOLS):
                raise PolicyError(ploc, f"IPPool({text}): network within reserved range")
            if not AddrSet.parse("100.64.0.0/10").issuperset(pool):
                raise PolicyError(ploc, f"IPPool({text}): must be within 100.64.0.0/10")
        return NodeAttr(loc, tuple(targets), attrs)

    def parse_auto_approvers(
        self, value: Any
    ) -> tuple[tuple[tuple[AddrSet, tuple[Alias, ...]], ...], tuple[Alias, ...]]:
        if value is None:
            return (), ()
        aa = obj_fields(value, "autoApprovers", ("routes", "exitnode"))
        routes = []
        raw_routes = aa.get("routes") or {}
        if not isinstance(raw_routes, dict):
            raise PolicyError("autoApprovers.routes", "must be an object")
        for prefix, approvers in raw_routes.items():
            loc = f'autoApprovers.routes["{prefix}"]'
            try:
                net = parse_prefix(prefix)
            except ValueError as exc:
                raise PolicyError(loc, f"invalid prefix: {exc}") from None
            routes.append((net, self.approvers(approvers, loc)))
        exit_node = self.approvers(aa.get("exitnode"), "autoApprovers.exitNode")
        return tuple(routes), exit_node

    def approvers(self, value: Any, loc: str) -> tuple[Alias, ...]:
        out = []
        for i, text in enumerate(str_list(value, loc)):
            a = self.alias(text, f"{loc}[{i}]")
            if a.kind not in ("user", "group", "tag") and a.name != "autogroup:member":
                raise PolicyError(f"{loc}[{i}]", f"invalid auto approver {text!r}")
            out.append(a)
        return tuple(out)

    def parse_test(self, value: Any, loc: str) -> PolicyTest:
        t = obj_fields(value, loc, ("src", "proto", "accept", "deny"))
        return PolicyTest(
            loc,
            as_str(t.get("src", ""), f"{loc}.src"),
            as_str(t.get("proto", ""), f"{loc}.proto"),
            tuple(str_list(t.get("accept"), f"{loc}.accept")),
            tuple(str_list(t.get("deny"), f"{loc}.deny")),
        )

    def parse_ssh_test(self, value: Any, loc: str) -> SSHTest:
        t = obj_fields(value, loc, ("src", "dst", "accept", "deny", "check"))
        dsts = tuple(d.strip() for d in str_list(t.get("dst"), f"{loc}.dst"))
        for i, d in enumerate(dsts):
            dloc = f"{loc}.dst[{i}]"
            if d == "autogroup:internet":
                raise PolicyError(dloc, f'SSH tests dst contains disallowed element "{d}"')
            try:
                addrs = AddrSet.parse(d) if (":" in d or d[:1].isdigit()) and "/" in d else None
            except ValueError:
                addrs = None
            if addrs is not None and not addrs.is_single_ip():
                raise PolicyError(dloc, f'SSH tests dst contains disallowed element "{d}"')
            if d in self.hosts and not self.hosts[d].is_single_ip():
                raise PolicyError(dloc, f'SSH tests dst contains disallowed element "{d}"')
        return SSHTest(
            loc,
            as_str(t.get("src", ""), f"{loc}.src").strip(),
            dsts,
            tuple(u.strip() for u in str_list(t.get("accept"), f"{loc}.accept")),
            tuple(u.strip() for u in str_list(t.get("deny"), f"{loc}.deny")),
            tuple(u.strip() for u in str_list(t.get("check"), f"{loc}.check")),
        )


def parse_policy(text: str, domains: frozenset[str] | None = None) -> Policy:
    """Parse HuJSON policy text. ``domains``: the tailnet's own e-mail domains, which alone may
    appear in ``user:*@domain`` / ``localpart:*@domain`` (None: not checked)."""
    raw = hujson.loads(text)
    if raw is None:
        raw = {}
    return _Parser(raw, domains).parse()


def parse_mapping(raw: Mapping[str, Any], domains: frozenset[str] | None = None) -> Policy:
    return _Parser(dict(raw), domains).parse()
