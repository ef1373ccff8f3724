"""The parsed, validated policy: plain frozen values, no topology in them.

Identity aliases (users, groups, tags, autogroups) stay symbolic here; they are matched against
nodes by ``aliases.py`` so that a node joining never requires re-parsing the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshscale.plugins.policy.addrset import EMPTY, AddrSet

PortRange = tuple[int, int]
ALL_PORTS: tuple[PortRange, ...] = ((0, 65535),)


@dataclass(frozen=True, slots=True)
class Alias:
    """One policy alias. ``kind`` is one of: ``*``, ``user``, ``userdomain``, ``group``, ``tag``,
    ``autogroup``, ``host``, ``prefix``. ``addrs`` holds the literal addresses of host/prefix."""

    kind: str
    name: str
    addrs: AddrSet = EMPTY

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class IPSpec:
    """One ``ip`` entry of a grant (or the proto+ports of an ACL destination)."""

    protos: tuple[int, ...]  # () means the client default set (TCP, UDP, ICMP, ICMPv6)
    ports: tuple[PortRange, ...]


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant; every ACL entry becomes one grant per destination."""

    loc: str
    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    ip: tuple[IPSpec, ...] = ()
    app: tuple[tuple[str, Any], ...] = ()  # capability name -> JSON value (a list)
    via: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SSHRule:
    loc: str
    action: str  # "accept" | "check"
    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    users: tuple[str, ...]
    accept_env: tuple[str, ...] = ()
    check_period: str | None = None


@dataclass(frozen=True, slots=True)
class NodeAttr:
    loc: str
    targets: tuple[Alias, ...]
    attrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PolicyTest:
    loc: str
    src: str
    proto: str
    accept: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SSHTest:
    loc: str
    src: str
    dst: tuple[str, ...]
    accept: tuple[str, ...]
    deny: tuple[str, ...]
    check: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hosts: dict[str, AddrSet] = field(default_factory=dict)
    host_text: dict[str, str] = field(default_factory=dict)
    tag_owners: dict[str, tuple[Alias, ...]] = field(default_factory=dict)
    grants: tuple[Grant, ...] = ()
    has_rules: bool = False  # acls or grants present: otherwise everything is allowed
    ssh: tuple[SSHRule, ...] = ()
    node_attrs: tuple[NodeAttr, ...] = ()
    auto_routes: tuple[tuple[AddrSet, tuple[Alias, ...]], ...] = ()
    auto_exit: tuple[Alias, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    ssh_tests: tuple[SSHTest, ...] = ()
    randomize_client_port: bool = False
