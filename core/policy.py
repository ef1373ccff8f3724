"""The PolicyEngine protocol: what core asks of the engine that decides who may reach whom.

The engine is chosen by config (``policy.engine``) from the engines plugins register with
``meshscale_policy_engines``. Core calls it directly (never through pluggy) on the hot path.

Values crossing this boundary use the wire spelling of tailcfg (``SrcIPs``, ``DstPorts``...), so
the engine's output goes to clients as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from meshscale.errors import MeshscaleError


@dataclass(frozen=True, slots=True)
class PolicyUser:
    id: int
    name: str  # login name, e.g. "alice"
    email: str = ""  # "alice@example.com"; policies may name users either way
    groups: frozenset[str] = frozenset()  # from the login provider: "devs" joins group:devs


@dataclass(frozen=True, slots=True)
class PolicyNode:
    id: int
    hostname: str
    user_id: int | None  # None for a tagged node: a node is a user's or tagged, never both
    tags: frozenset[str] = frozenset()
    ipv4: str | None = None  # "100.64.0.1"
    ipv6: str | None = None  # "fd7a:115c:a1e0::1"
    routable_ips: tuple[str, ...] = ()  # advertised by the client (Hostinfo.RoutableIPs)
    # Approved by an admin, followed by what ``auto_approved_routes`` approves under the policy
    # in force: core recomputes the latter on every policy change and passes the union here.
    approved_routes: tuple[str, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a)


@dataclass(frozen=True, slots=True)
class Affected:
    """Which nodes' policy output (filter, visible peers, SSH, CapMap) may have changed.

    ``everyone`` means all nodes; otherwise ``nodes`` lists them. Core recomputes those nodes'
    views and sends each only what actually differs.
    """

    everyone: bool = False
    nodes: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def all(cls) -> Affected:
        return cls(everyone=True)

    @classmethod
    def none(cls) -> Affected:
        return cls()


Rule = dict[str, Any]  # one tailcfg.FilterRule, wire spelling


@runtime_checkable
class PolicyEngine(Protocol):
    """Compiled once per policy change; answers per-node questions cheaply afterwards."""

    def check(
        self, text: str, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]
    ) -> None:
        """Raise PolicyError (with location) if ``text`` is invalid or its tests fail."""

    def set_policy(self, text: str | None, tests: bool = True) -> Affected:
        """Install a policy (None: allow everything). Atomic: on PolicyError nothing changes.

        ``tests=False`` (start-up only) installs it without running the policy's ``tests``:
        they were checked when the policy was set, and nodes coming and going since must not
        stop the server from starting (the caller runs ``check`` and warns instead)."""

    def set_topology(self, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> None:
        """Replace the whole tailnet the engine knows (start-up)."""

    def upsert_user(self, user: PolicyUser) -> Affected: ...

    def remove_user(self, user_id: int) -> Affected: ...

    def upsert_node(self, node: PolicyNode) -> Affected:
        """A node joined or changed in a way policy sees (tags, user, addresses, routes).

        Never called for endpoint, DERP or online changes: those stay off the policy path."""

    def remove_node(self, node_id: int) -> Affected: ...

    def packet_filter(self, node_id: int) -> list[Rule]:
        """The node's inbound PacketFilter ([] denies all inbound).

        An engine may also offer ``packet_filter_json(node_id) -> (bytes, bytes)``: the filter
        as the JSON ``orjson.dumps`` gives and a 16-byte digest that changes whenever the JSON
        does (not necessarily a hash of it). The mapper prefers it (optional, like
        ``visible_peer_bits``): an engine can then render parts many nodes share only once."""

    def visible_peers(self, node_id: int) -> Iterable[int] | None:
        """IDs of the peers this node may see (either direction); None means every node.

        An engine may also offer ``visible_peer_bits(node_id) -> int | None``, the same set as
        a bitset (it may hold the node itself) over the positions of its ``node_slots``
        attribute (a ``meshscale.bitset.Slots``, which the mapper then shares). The mapper
        prefers it: an engine handing one shared int to every node alike spares a set per open
        stream. It is optional (not part of this Protocol), so engines without it keep working."""

    def peer_allowed_ips(self, viewer_id: int, peer: PolicyNode) -> list[str] | None:
        """AllowedIPs of ``peer`` as ``viewer`` sees it; None: the peer's addresses only."""

    def ssh_policy(self, node_id: int) -> dict[str, Any] | None:
        """The node's SSHPolicy (``{"rules": [...]}``) or None when no rule targets it."""

    def ssh_check_period(self, src_id: int, dst_id: int, local_user: str) -> float | None:
        """For an SSH check (``/machine/ssh/action``): how many seconds a re-authentication of
        ``src``'s user stays valid for ``src`` reaching ``dst`` as ``local_user`` (0: every
        connection checks; ``checkPeriod`` of the policy), or None when no check rule covers
        that connection any more (the server then refuses it)."""

    def cap_map(self, node_id: int) -> Mapping[str, list[Any] | None]:
        """CapMap entries policy adds to this node (nodeAttrs)."""

    def tags_permitted(self, user: PolicyUser | None, tags: Iterable[str]) -> bool:
        """May ``user`` (None: a tagged key's owner) put these tags on a node (tagOwners)?"""

    def uniform_peer_view(self) -> bool:
        """True when ``peer_allowed_ips`` is None for every viewer and peer under the current
        policy: core may then reuse one serialized peer list for every viewer."""

    def auto_approved_routes(self, node: PolicyNode) -> list[str]:
        """Which of the node's advertised routes policy approves automatically (autoApprovers;
        exit routes only through ``exitNode``). ``node.approved_routes`` holds only the admin's
        approvals here; core asks again for routers after every policy change."""

    def route_visible(self, viewer_id: int, route: str) -> bool:
        """May the viewer send to or receive from subnet ``route``? A peer serving it carries
        it in AllowedIPs/PrimaryRoutes only for viewers for which this is true (core's
        ``RouteTable.routes_for``; exit routes are offered to every viewer)."""

    def route_via_tags(self, viewer_id: int, route: str) -> frozenset[str]:
        """Tags of the routers a grant with ``via`` steers the viewer's traffic to ``route``
        through (empty: the elected primary serves it)."""


ALLOW_ALL_FILTER: list[Rule] = [
    {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
]


class AllowAllEngine:
    """Everyone sees and reaches everyone: the behaviour without a policy engine."""

    def check(
        self, text: str, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]
    ) -> None:
        return None

    def set_policy(self, text: str | None, tests: bool = True) -> Affected:
        return Affected.none()

    def set_topology(self, users: Sequence[PolicyUser], nodes: Sequence[PolicyNode]) -> None:
        return None

    def upsert_user(self, user: PolicyUser) -> Affected:
        return Affected.none()

    def remove_user(self, user_id: int) -> Affected:
        return Affected.none()

    def upsert_node(self, node: PolicyNode) -> Affected:
        return Affected.none()

    def remove_node(self, node_id: int) -> Affected:
        return Affected.none()

    def packet_filter(self, node_id: int) -> list[Rule]:
        return ALLOW_ALL_FILTER

    def visible_peers(self, node_id: int) -> Iterable[int] | None:
        return None

    def peer_allowed_ips(self, viewer_id: int, peer: PolicyNode) -> list[str] | None:
        return None

    def ssh_policy(self, node_id: int) -> dict[str, Any] | None:
        return None

    def ssh_check_period(self, src_id: int, dst_id: int, local_user: str) -> float | None:
        return None

    def cap_map(self, node_id: int) -> Mapping[str, list[Any] | None]:
        return {}

    def tags_permitted(self, user: PolicyUser | None, tags: Iterable[str]) -> bool:
        return True

    def uniform_peer_view(self) -> bool:
        return True

    def auto_approved_routes(self, node: PolicyNode) -> list[str]:
        return []

    def route_visible(self, viewer_id: int, route: str) -> bool:
        return True

    def route_via_tags(self, viewer_id: int, route: str) -> frozenset[str]:
        return frozenset()


def check_admin_tags(engine: PolicyEngine, tags: Iterable[str]) -> None:
    """Tags an administrator sets on a node (``nodes tag``, SetTags), checked as headscale
    checks them: each ``tag:`` + lower case without spaces, and defined in the policy's
    tagOwners (an admin may set any tag that exists; no owner check on the admin). Raises
    MeshscaleError naming the tags refused; with no policy in force every tag exists."""
    tags = list(tags)
    for tag in tags:
        if not tag.startswith("tag:"):
            raise MeshscaleError(f"invalid tag {tag!r}: tag must start with the string 'tag:'")
        if tag.lower() != tag:
            raise MeshscaleError(f"invalid tag {tag!r}: tag should be lowercase")
        if len(tag.split()) > 1 or tag != tag.strip():
            raise MeshscaleError(f"invalid tag {tag!r}: tags must not contain spaces")
    refused = [t for t in tags if not engine.tags_permitted(None, [t])]
    if refused:
        raise MeshscaleError(f"requested tags {refused} are invalid or not permitted: the "
                             "policy's tagOwners does not define them")
