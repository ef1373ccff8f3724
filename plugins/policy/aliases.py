"""The names a policy declares (groups, hosts, tagOwners) and the aliases its rules use.

``AliasScope`` reads the three declaring sections first and then resolves every alias a rule
names (``group:``, ``tag:``, hosts, users, ``autogroup:``, prefixes, ``*``) against them,
refusing unknown ones with Tailscale's wording, and says which may stand where (a rule's src
or dst, an SSH rule's). The rule sections (``parse.py``) and the policy's tests
(``policytests.py``) both resolve aliases through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshscale.errors import PolicyError
from meshscale.plugins.policy.addrset import AddrSet
from meshscale.plugins.policy.model import Alias
from meshscale.plugins.policy.values import check_tag_name, parse_prefix, str_list

AUTOGROUPS = frozenset(
    {"internet", "member", "nonroot", "tagged", "self", "danger-all", "admin", "owner"}
)
# The autogroups each position of a rule allows.
SRC_AUTOGROUPS = frozenset({"member", "tagged", "danger-all", "admin", "owner"})
DST_AUTOGROUPS = frozenset({"internet", "member", "tagged", "self"})
SSH_SRC_AUTOGROUPS = frozenset({"member", "tagged", "admin", "owner"})
SSH_DST_AUTOGROUPS = frozenset({"member", "tagged", "self"})


class AliasScope:
    """One policy's declared names, and alias resolution against them. ``domains``: the
    tailnet's own e-mail domains, which alone may appear in ``user:*@domain`` (None: not
    checked)."""

    def __init__(self, domains: frozenset[str] | None) -> None:
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
        for i, text in enumerate(str_list(value, loc)):
            a = self.alias(text, f"{loc}[{i}]")
            if check is not None:
                check(a, f"{loc}[{i}]")
            out.append(a)
        return tuple(out)

    # -- which aliases may stand where ------------------------------------------------------

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

    # -- declarations ----------------------------------------------------------------------------

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
            members = str_list(value[name], f'groups["{name}"]', allow_null=False)
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
                self.hosts[name] = parse_prefix(addr)
            except ValueError as exc:
                raise PolicyError(loc, f"invalid address {addr!r}: {exc}") from None
            self.host_text[name] = addr

    def parse_tag_owners(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise PolicyError("tagOwners", "must be an object")
        for tag in value:
            check_tag_name(tag, f'tagOwners["{tag}"]')
            self.tags[tag] = ()
        for tag, owners in value.items():
            loc = f'tagOwners["{tag}"]'
            out = []
            for i, owner in enumerate(str_list(owners, loc)):
                a = self.alias(owner, f"{loc}[{i}]")
                if a.kind not in ("user", "group", "tag") and not (
                    a.kind == "autogroup" and a.name in ("autogroup:admin", "autogroup:owner")
                ):
                    raise PolicyError(f"{loc}[{i}]", f"invalid tag owner {owner!r}")
                out.append(a)
            self.tags[tag] = tuple(out)
