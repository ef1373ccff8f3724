"""Policy text -> validated ``Policy``. Every refusal is a PolicyError naming where it happened.

The rules follow what Tailscale's control plane accepts and refuses (the conformance corpus is
the reference); messages reuse its wording where it has one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshscale.errors import PolicyError
from meshscale.plugins.policy import hujson
from meshscale.plugins.policy.addrset import AddrSet
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

PROTOCOLS: dict[str, int] = {
    "icmp": 1, "igmp": 2, "ipv4": 4, "ip-in-ip": 4, "tcp": 6, "egp": 8, "igp": 9, "udp": 17,
    "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "sctp": 132, "fc": 133,
}
PORT_PROTOCOLS = frozenset({6, 17, 132})
AUTOGROUPS = frozenset(
    {"internet", "member", "nonroot", "tagged", "self", "danger-all", "admin", "owner"}
)
SRC_AUTOGROUPS = frozenset({"member", "tagged", "danger-all", "admin", "owner"})
DST_AUTOGROUPS = frozenset({"internet", "member", "tagged", "self"})
SSH_SRC_AUTOGROUPS = frozenset({"member", "tagged", "admin", "owner"})
SSH_DST_AUTOGROUPS = frozenset({"member", "tagged", "self"})
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
_DURATION = re.compile(r"^[-+]?(\d+(\.\d*)?(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _fields(obj: Any, loc: str, allowed: Iterable[str]) -> dict[str, Any]:
    """Lower-case the keys of a JSON object (Tailscale matches them case-insensitively),
    drop ``#``-prefixed annotation keys and refuse unknown ones."""
    if not isinstance(obj, dict):
        raise PolicyError(loc, "must be an object")
    allowed_set = set(allowed)
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key.startswith("#"):
            continue
        low = key.lower()
        if low not in allowed_set:
            raise PolicyError(f"{loc}.{key}" if loc else key, "unknown field")
        out[low] = value
    return out


def _strings(value: Any, loc: str, *, allow_null: bool = True) -> list[str]:
    if value is None and allow_null:
        return []
    if not isinstance(value, list):
        raise PolicyError(loc, "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyError(f"{loc}[{i}]", "must be a string")
    return list(value)


def parse_duration(text: str) -> float:
    """Go ``time.ParseDuration`` (what Tailscale uses for checkPeriod), in seconds."""
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(f'time: invalid duration "{text}"')
    total = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    return -total if text.startswith("-") else total


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """``*``, ``22``, ``80-443`` or a comma list of those. Raises ValueError with the reason."""
    if text == "*":
        return ALL_PORTS
    out: list[PortRange] = []
    for part in text.split(","):
        if "-" in part:
            bounds = [b for b in part.split("-") if b != ""]
            if len(bounds) != 2:
                raise ValueError("invalid port range format")
            first, last = _port(bounds[0]), _port(bounds[1])
            if first > last:
                raise ValueError("invalid port range: first port is greater than last port")
            out.append((first, last))
        else:
            port = _port(part)
            if port < 1:
                raise ValueError("first port must be >0, or use '*' for wildcard")
            out.append((port, port))
    return tuple(out)


def _port(text: str) -> int:
    if not text.isdigit():
        raise ValueError("invalid first integer")
    value = int(text)
    if value > 65535:
        raise ValueError("port number out of range")
    return value


def parse_proto(text: str, loc: str) -> tuple[int, ...]:
    """A protocol name or IANA number; "" means the client's default set."""
    low = text.strip().lower()
    if low == "":
        return ()
    if low in PROTOCOLS:
        return (PROTOCOLS[low],)
    if low == "*":
        raise PolicyError(loc, 'proto name "*" not known; use a protocol number 0-255 or name')
    if not low.isdigit():
        raise PolicyError(loc, f"invalid protocol {text!r}: use a known name or a number 0-255")
    if low.startswith("0"):
        raise PolicyError(loc, f"leading 0 not permitted in protocol number {text!r}")
    number = int(low)
    if number > 255:
        raise PolicyError(loc, f"protocol number {number} out of range (0-255)")
    return (number,)


def split_host_port(text: str) -> tuple[str, str]:
    """``alias:ports`` -> (alias, ports); IPv6 may be bracketed (``[fd7a::1]:80``)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("square brackets are only valid around IPv6 addresses")
        host = text[1:close]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError("square brackets are only valid around IPv6 addresses") from None
        text = host + text[close + 1 :]
    idx = text.rfind(":")
    if idx <= 0 or idx == len(text) - 1:
        raise ValueError("must have the form alias:ports")
    return text[:idx], text[idx + 1 :]


class _Parser:
    def __init__(self, raw: dict[str, Any], domains: frozenset[str] | None) -> None:
        self.raw = raw
        self.domains = domains
        self.groups: dict[str, tuple[str, ...]] = {}
        self.hosts: dict[str, AddrSet] = {}
        self.host_text: dict[str, str] = {}
        self.tags: dict[str, tuple[Alias, ...]] = {}

    # -- aliases ------------------------------------------------------------------------------

    def alias(self, text: str, loc: str) -> Alias:
        """Parse and check one alias (existence of groups, tags and hosts)."""
        text = text.strip()  # Tailscale trims surrounding whitespace before lookup
        if text == "*":
            return Alias("*", "*")
        try:
            addrs = AddrSet.parse(text) if "-" not in text else None
        except ValueError:
            addrs = None
        if addrs is not None and (":" in text or text[:1].isdigit()):
            return Alias("prefix", text, addrs)
        if text.startswith("user:"):
            local, at, domain = text[len("user:") :].rpartition("@")
            if local != "*" or not at:
                raise PolicyError(loc, f"invalid user expression {text!r}: use user:*@<domain>")
            self.check_domain(domain, loc, "user:*@<domain>")
            return Alias("userdomain", text)
        if "@" in text:
            return Alias("user", text)
        if text.startswith("group:"):
            if text not in self.groups:
                raise PolicyError(loc, f"group not found: {text!r}")
            return Alias("group", text)
        if text.startswith("tag:"):
            if text not in self.tags:
                raise PolicyError(loc, f"tag not found: {text!r}")
            return Alias("tag", text)
        if text.startswith("autogroup:"):
            name = text[len("autogroup:") :]
            if name not in AUTOGROUPS:
                raise PolicyError(loc, f"unknown autogroup {text!r}")
            return Alias("autogroup", text)
        if ":" in text or text == "":
            raise PolicyError(loc, f"invalid alias {text!r}")
        if text not in self.hosts:
            raise PolicyError(loc, f"host not defined in policy: {text!r}")
        return Alias("host", text, self.hosts[text])

    def check_domain(self, domain: str, loc: str, form: str) -> None:
        if self.domains is not None and domain not in self.domains:
            raise PolicyError(
                loc,
                f"{domain} is not associated with this Tailnet and cannot be used in {form} "
                "expressions",
            )

    def aliases(
        self, value: Any, loc: str, check: Callable[[Alias, str], None] | None = None
    ) -> tuple[Alias, ...]:
        out = []
        for i, text in enumerate(_strings(value, loc)):
            a = self.alias(text, f"{loc}[{i}]")
            if check is not None:
                check(a, f"{loc}[{i}]")
            out.append(a)
        return tuple(out)

    # -- sections -----------------------------------------------------------------------------

    def parse(self) -> Policy:
        top = _fields(self.raw, "", TOP_LEVEL)
        self.parse_groups(top.get("groups"))
        self.parse_hosts(top.get("hosts"))
        self.parse_tag_owners(top.get("tagowners"))
        grants: list[Grant] = []
        acls = top.get("acls")
        for i, acl in enumerate(_list(acls, "acls")):
            grants.extend(self.parse_acl(acl, f"acls[{i}]"))
        for i, grant in enumerate(_list(top.get("grants"), "grants")):
            grants.append(self.parse_grant(grant, f"grants[{i}]"))
        ssh = tuple(
            self.parse_ssh(rule, f"ssh[{i}]") for i, rule in enumerate(_list(top.get("ssh"), "ssh"))
        )
        attrs = tuple(
            self.parse_node_attr(na, f"nodeAttrs[{i}]")
            for i, na in enumerate(_list(top.get("nodeattrs"), "nodeAttrs"))
        )
        routes, exit_node = self.parse_auto_approvers(top.get("autoapprovers"))
        tests = tuple(
            self.parse_test(t, f"tests[{i}]")
            for i, t in enumerate(_list(top.get("tests"), "tests"))
        )
        ssh_tests = tuple(
            self.parse_ssh_test(t, f"sshTests[{i}]")
            for i, t in enumerate(_list(top.get("sshtests"), "sshTests"))
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

    def parse_groups(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise PolicyError("groups", "must be an object")
        for name in value:
            if not name.startswith("group:"):
                raise PolicyError(f"groups[{name!r}]", "group names must start with 'group:'")
        # Tailscale refuses any group inside a group (so cycles cannot happen); report the
        # deepest parent first, as it does.
        for name in sorted(value, reverse=True):
            members = _strings(value[name], f'groups["{name}"]', allow_null=False)
            for member in members:
                if member.strip().startswith("group:"):
                    raise PolicyError(
                        f'groups["{name}"]', f"{member!r}: group members cannot be recursive"
                    )
        for name, members in value.items():
            loc = f'groups["{name}"]'
            out = []
            for i, raw_member in enumerate(members):
                member = raw_member.strip()
                if "@" not in member:
                    raise PolicyError(f"{loc}[{i}]", f"{member!r}: a group member is a user@")
                out.append(member)
            self.groups[name] = tuple(out)

    def parse_hosts(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise PolicyError("hosts", "must be an object")
        for name, addr in value.items():
            loc = f'hosts["{name}"]'
            if "@" in name or ":" in name or not name:
                raise PolicyError(loc, f"invalid host name {name!r}")
            if not isinstance(addr, str):
                raise PolicyError(loc, "must be an IP address or prefix")
            try:
                self.hosts[name] = _prefix(addr)
            except ValueError as exc:
                raise PolicyError(loc, f"invalid address {addr!r}: {exc}") from None
            self.host_text[name] = addr

    def parse_tag_owners(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise PolicyError("tagOwners", "must be an object")
        for tag in value:
            _check_tag_name(tag, f'tagOwners["{tag}"]')
            self.tags[tag] = ()
        for tag, owners in value.items():
            loc = f'tagOwners["{tag}"]'
            out = []
            for i, owner in enumerate(_strings(owners, loc)):
                a = self.alias(owner, f"{loc}[{i}]")
                if a.kind not in ("user", "group", "tag") and not (
                    a.kind == "autogroup" and a.name in ("autogroup:admin", "autogroup:owner")
                ):
                    raise PolicyError(f"{loc}[{i}]", f"invalid tag owner {owner!r}")
                out.append(a)
            self.tags[tag] = tuple(out)

    def parse_acl(self, value: Any, loc: str) -> list[Grant]:
        acl = _fields(value, loc, ("action", "src", "dst", "proto", "users", "ports"))
        if acl.get("action") != "accept":
            raise PolicyError(f"{loc}.action", f"action={acl.get('action')!r} is not supported")
        protos = parse_proto(_str(acl.get("proto", ""), f"{loc}.proto"), f"{loc}.proto")
        src = self.aliases(acl.get("src"), f"{loc}.src", self.check_src)
        grants = []
        dsts: list[tuple[Alias, tuple[PortRange, ...], str]] = []
        for i, text in enumerate(_strings(acl.get("dst"), f"{loc}.dst")):
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

    def check_src(self, a: Alias, loc: str) -> None:
        if a.kind == "autogroup":
            if a.name == "autogroup:self":
                raise PolicyError(loc, '"autogroup:self" not valid on the src side of a rule')
            if a.name == "autogroup:internet":
                raise PolicyError(loc, "autogroup:internet can only be used in destinations")
            if a.name[len("autogroup:") :] not in SRC_AUTOGROUPS:
                raise PolicyError(loc, f"{a.name} is not supported as a source")

    def check_dst(self, a: Alias, loc: str) -> None:
        if a.kind == "autogroup":
            if a.name == "autogroup:danger-all":
                raise PolicyError(loc, "cannot use autogroup:danger-all as a dst")
            if a.name[len("autogroup:") :] not in DST_AUTOGROUPS:
                raise PolicyError(loc, f"{a.name} is not supported as a destination")

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
        g = _fields(value, loc, ("src", "dst", "ip", "app", "via", "srcposture"))
        src = self.aliases(g.get("src"), f"{loc}.src", self.check_src)
        dst = self.aliases(g.get("dst"), f"{loc}.dst", self.check_dst)
        for i, a in enumerate(dst):
            if a.kind == "prefix" and a.addrs.prefixes() in (["0.0.0.0/0"], ["::/0"]):
                raise PolicyError(
                    f"{loc}.dst[{i}]",
                    f'dst "{a.name}": to allow all IP addresses, use "*" or "autogroup:internet"',
                )
        ips: list[IPSpec] = []
        for i, text in enumerate(_strings(g.get("ip"), f"{loc}.ip")):
            ips.append(_ip_spec(text.strip(), f"{loc}.ip[{i}]"))
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
        for i, raw_tag in enumerate(_strings(g.get("via"), f"{loc}.via")):
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
        r = _fields(value, loc, ("action", "src", "dst", "users", "checkperiod", "acceptenv"))
        action = r.get("action")
        if action is None or (isinstance(action, str) and action.strip() == ""):
            raise PolicyError(f"{loc}.action", "action must be specified")
        if not isinstance(action, str) or action.strip() not in ("accept", "check"):
            raise PolicyError(f"{loc}.action", f"{action!r} is not a valid action")
        action = action.strip()
        users = [u.strip() for u in _strings(r.get("users"), f"{loc}.users")]
        if not users:
            raise PolicyError(f"{loc}.users", "users must be specified")
        for i, user in enumerate(users):
            if user in ("", "*"):
                raise PolicyError(f"{loc}.users[{i}]", f'user "{user}" is not valid')
            if user.startswith("localpart:*@") and user != "localpart:*@":
                self.check_domain(user[len("localpart:*@") :], f"{loc}.users[{i}]",
                                  "user:*@<domain>")
        env = _strings(r.get("acceptenv"), f"{loc}.acceptEnv")
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

    def check_ssh_src(self, a: Alias, loc: str) -> None:
        if a.kind in ("*", "host", "prefix"):
            raise PolicyError(loc, f"invalid src {a.name!r}")
        if a.kind == "autogroup" and a.name[len("autogroup:") :] not in SSH_SRC_AUTOGROUPS:
            raise PolicyError(loc, f"{a.name} is not supported as an SSH source")

    def check_ssh_dst(self, a: Alias, loc: str) -> None:
        if a.kind in ("*", "host", "prefix", "group", "userdomain"):
            raise PolicyError(loc, f'invalid dst "{a.name}"')
        if a.kind == "autogroup" and a.name[len("autogroup:") :] not in SSH_DST_AUTOGROUPS:
            raise PolicyError(loc, f"{a.name} is not supported as an SSH destination")

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
        na = _fields(value, loc, ("target", "attr", "ippool"))

        def check(a: Alias, aloc: str) -> None:
            if a.kind == "autogroup" and a.name[len("autogroup:") :] not in NODEATTR_AUTOGROUPS:
                raise PolicyError(aloc, f"{a.name} is not supported as a nodeAttrs target")

        targets = []
        for i, text in enumerate(_strings(na.get("target"), f"{loc}.target")):
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
        attrs = tuple(a.strip() for a in _strings(na.get("attr"), f"{loc}.attr"))
        for i, text in enumerate(_strings(na.get("ippool"), f"{loc}.ipPool")):
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
        aa = _fields(value, "autoApprovers", ("routes", "exitnode"))
        routes = []
        raw_routes = aa.get("routes") or {}
        if not isinstance(raw_routes, dict):
            raise PolicyError("autoApprovers.routes", "must be an object")
        for prefix, approvers in raw_routes.items():
            loc = f'autoApprovers.routes["{prefix}"]'
            try:
                net = _prefix(prefix)
            except ValueError as exc:
                raise PolicyError(loc, f"invalid prefix: {exc}") from None
            routes.append((net, self.approvers(approvers, loc)))
        exit_node = self.approvers(aa.get("exitnode"), "autoApprovers.exitNode")
        return tuple(routes), exit_node

    def approvers(self, value: Any, loc: str) -> tuple[Alias, ...]:
        out = []
        for i, text in enumerate(_strings(value, loc)):
            a = self.alias(text, f"{loc}[{i}]")
            if a.kind not in ("user", "group", "tag") and a.name != "autogroup:member":
                raise PolicyError(f"{loc}[{i}]", f"invalid auto approver {text!r}")
            out.append(a)
        return tuple(out)

    def parse_test(self, value: Any, loc: str) -> PolicyTest:
        t = _fields(value, loc, ("src", "proto", "accept", "deny"))
        return PolicyTest(
            loc,
            _str(t.get("src", ""), f"{loc}.src"),
            _str(t.get("proto", ""), f"{loc}.proto"),
            tuple(_strings(t.get("accept"), f"{loc}.accept")),
            tuple(_strings(t.get("deny"), f"{loc}.deny")),
        )

    def parse_ssh_test(self, value: Any, loc: str) -> SSHTest:
        t = _fields(value, loc, ("src", "dst", "accept", "deny", "check"))
        dsts = tuple(d.strip() for d in _strings(t.get("dst"), f"{loc}.dst"))
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
            _str(t.get("src", ""), f"{loc}.src").strip(),
            dsts,
            tuple(u.strip() for u in _strings(t.get("accept"), f"{loc}.accept")),
            tuple(u.strip() for u in _strings(t.get("deny"), f"{loc}.deny")),
            tuple(u.strip() for u in _strings(t.get("check"), f"{loc}.check")),
        )


def _list(value: Any, loc: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(loc, "must be a list")
    return value


def _str(value: Any, loc: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(loc, "must be a string")
    return value


def _prefix(text: str) -> AddrSet:
    text = text.strip()
    if "/" in text:
        ipaddress.ip_network(text, strict=False)
    else:
        ipaddress.ip_address(text)
    return AddrSet.parse(text)


def _check_tag_name(tag: str, loc: str) -> None:
    if not tag.startswith("tag:"):
        raise PolicyError(loc, "tag names must start with 'tag:'")
    rest = tag[len("tag:") :]
    if not rest or not ("a" <= rest[0] <= "z" or "A" <= rest[0] <= "Z"):
        raise PolicyError(loc, "tag names must start with a letter, after 'tag:'")


def _ip_spec(text: str, loc: str) -> IPSpec:
    if text == "*":
        return IPSpec((), ((0, 65535),))
    proto = ""
    ports_text = text
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 2:
            raise PolicyError(loc, "expected only one colon in Internet protocol and port type")
        proto, ports_text = parts
    protos = parse_proto(proto, loc)
    try:
        ports = parse_ports(ports_text)
    except ValueError as exc:
        raise PolicyError(loc, f'port range "{ports_text}": {exc}') from None
    return IPSpec(protos, ports)


def parse_policy(text: str, domains: frozenset[str] | None = None) -> Policy:
    """Parse HuJSON policy text. ``domains``: the tailnet's own e-mail domains, which alone may
    appear in ``user:*@domain`` / ``localpart:*@domain`` (None: not checked)."""
    raw = hujson.loads(text)
    if raw is None:
        raw = {}
    return _Parser(raw, domains).parse()


def parse_mapping(raw: Mapping[str, Any], domains: frozenset[str] | None = None) -> Policy:
    return _Parser(dict(raw), domains).parse()
