"""The invalidation table: which per-node outputs each kind of change makes stale.

One place decides it (architecture.md §6). The mapper looks every change up here and refreshes
exactly the outputs named, for exactly the streams named; its caches (peer JSON, chunk
versions, CapMaps) are dropped by the same entries. A new kind of change is a new row here, and
``tests/unit/test_invalidation.py`` fails until every event has one.

Three scopes:

- ``own``: the changed node's own stream;
- ``viewers``: every stream that sees the node (its peers under the policy in force);
- ``everyone``: every open stream.

Policy-derived outputs (packet filter, SSH policy, which peers are visible, policy CapMap,
AllowedIPs per viewer, which routes a viewer may use) depend on the policy and the whole node
set. ``POLICY`` in ``own`` marks the events the policy engine hears of (state's ``_sync_node``
and user hooks): the engine updates its caches (compiled grants, SSH rules) and names the nodes
whose policy outputs may differ (``Affected``), which arrive as ``POLICY_CHANGED`` with that
scope; the changed node's own stream is always among them. The mapper recomputes those
outputs and sends each stream only what differs from what it holds.

DNSConfig changes at run time (admin API, SIGHUP, the extra records file): ``DNS`` goes to every
stream; a new base domain renames every node, so then each stream gets a full map.

The oracle (tests/plugin/test_oracle.py) checks the table's consequences: after any sequence of
changes every stream's netmap equals what a freshly started server sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, Flag, auto

from meshscale.state import changes as ch


class Output(Flag):
    """The parts of a node's map a change can make stale."""

    NONE = 0
    PEER = auto()  # the node's whole entry in peer lists (PeersChanged)
    PATCH = auto()  # the fields of that entry a PeersChangedPatch carries
    GONE = auto()  # the entry leaves every peer list (PeersRemoved); its own stream ends
    SELF = auto()  # the self Node: name, key, expiry, tags, CapMap, primary and exit routes
    PROFILE = auto()  # the UserProfile of the node's (or the user's) owner
    POLICY = auto()  # packet filter, SSH policy, visible peers, per-viewer AllowedIPs/routes
    DERP = auto()  # DERPMap
    DNS = auto()  # DNSConfig (and, with a new base domain, every node's name and Domain)


class Event(Enum):
    NODE_JOINED = "node joined"
    NODE_LEFT = "node left"
    NODE_REAUTHED = "node logged in again (owner or tags may change)"
    NODE_APPROVED = "node approved (it waited for an admin)"
    NODE_RENAMED = "node renamed"
    HOSTINFO = "hostinfo changed"
    ROUTES_ADVERTISED = "routes advertised"
    ROUTES_APPROVED = "routes approved"
    PRIMARY_ROUTES = "primary routes re-elected"
    NODE_CHANGED = "node changed (unspecified)"
    ENDPOINTS = "endpoints, DERP home or disco key"
    KEY_ROTATED = "node key rotated"
    EXPIRY = "key expiry"
    ONLINE = "online or last seen"
    USER_CHANGED = "user changed"
    POLICY_CHANGED = "policy outputs changed"
    DERP_MAP_CHANGED = "DERP map changed"
    DNS_CHANGED = "DNS settings changed"


@dataclass(frozen=True, slots=True)
class Stale:
    own: Output = Output.NONE
    viewers: Output = Output.NONE
    everyone: Output = Output.NONE
    # Decided once per row (Flag arithmetic costs microseconds on the hot path).
    peer: bool = field(init=False)
    patch: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer", bool(self.viewers & Output.PEER))
        object.__setattr__(self, "patch", bool(self.viewers & Output.PATCH))


Out = Output  # short for the table
TABLE: Mapping[Event, Stale] = {
    # A new node's own stream starts with a full map; viewers get it with its owner's profile.
    Event.NODE_JOINED: Stale(own=Out.POLICY, viewers=Out.PEER | Out.PROFILE),
    Event.NODE_LEFT: Stale(viewers=Out.GONE),  # the engine hears of it; viewers drop the peer
    Event.NODE_REAUTHED: Stale(own=Out.SELF | Out.PROFILE | Out.POLICY,
                               viewers=Out.PEER | Out.PROFILE),
    # A node that waited for approval: its own stream goes from cut off (no peers,
    # MachineAuthorized false) to a full map; its viewers get it as a new peer.
    Event.NODE_APPROVED: Stale(own=Out.SELF | Out.PROFILE | Out.POLICY,
                               viewers=Out.PEER | Out.PROFILE),
    Event.NODE_RENAMED: Stale(own=Out.SELF, viewers=Out.PEER),
    Event.HOSTINFO: Stale(own=Out.SELF, viewers=Out.PEER),
    # Routes: the router's own AllowedIPs/PrimaryRoutes, its entry for viewers, and policy
    # (route visibility, "*" sources carrying subnet routes, via grants).
    Event.ROUTES_ADVERTISED: Stale(own=Out.SELF | Out.POLICY, viewers=Out.PEER),
    Event.ROUTES_APPROVED: Stale(own=Out.SELF | Out.POLICY, viewers=Out.PEER),
    Event.PRIMARY_ROUTES: Stale(own=Out.SELF, viewers=Out.PEER),
    Event.NODE_CHANGED: Stale(own=Out.SELF | Out.PROFILE | Out.POLICY,
                              viewers=Out.PEER | Out.PROFILE),
    Event.ENDPOINTS: Stale(viewers=Out.PATCH),
    Event.KEY_ROTATED: Stale(own=Out.SELF, viewers=Out.PATCH),
    Event.EXPIRY: Stale(own=Out.SELF, viewers=Out.PATCH),
    Event.ONLINE: Stale(viewers=Out.PATCH),
    # A rename or new e-mail: the profile everywhere; policies naming users are re-resolved
    # by the engine, which names the affected nodes.
    Event.USER_CHANGED: Stale(everyone=Out.PROFILE),
    Event.POLICY_CHANGED: Stale(everyone=Out.POLICY),  # scope: the nodes the engine names
    Event.DERP_MAP_CHANGED: Stale(everyone=Out.DERP),
    Event.DNS_CHANGED: Stale(everyone=Out.DNS),
}

_WHY = {
    ch.Why.REAUTH: Event.NODE_REAUTHED,
    ch.Why.APPROVED: Event.NODE_APPROVED,
    ch.Why.RENAMED: Event.NODE_RENAMED,
    ch.Why.HOSTINFO: Event.HOSTINFO,
    ch.Why.ROUTES_ADVERTISED: Event.ROUTES_ADVERTISED,
    ch.Why.ROUTES_APPROVED: Event.ROUTES_APPROVED,
    ch.Why.PRIMARY_ROUTES: Event.PRIMARY_ROUTES,
    ch.Why.OTHER: Event.NODE_CHANGED,
}


def patch_events(fields: ch.Patch) -> list[Event]:
    out = []
    if fields & (ch.Patch.ENDPOINTS | ch.Patch.DERP | ch.Patch.DISCO):
        out.append(Event.ENDPOINTS)
    if ch.Patch.KEY in fields:
        out.append(Event.KEY_ROTATED)
    if ch.Patch.EXPIRY in fields:
        out.append(Event.EXPIRY)
    if ch.Patch.ONLINE in fields:
        out.append(Event.ONLINE)
    return out


def events_of(change: ch.Change) -> list[Event]:
    """The table rows a change event stands for."""
    if isinstance(change, ch.NodeAdded):
        return [Event.NODE_JOINED]
    if isinstance(change, ch.NodeRemoved):
        return [Event.NODE_LEFT]
    if isinstance(change, ch.NodeChanged):
        return [_WHY[change.why]]
    if isinstance(change, ch.NodePatched):
        return patch_events(change.fields)
    if isinstance(change, ch.UserChanged):
        return [Event.USER_CHANGED]
    if isinstance(change, ch.PolicyChanged):
        return [Event.POLICY_CHANGED]
    if isinstance(change, ch.DnsChanged):
        return [Event.DNS_CHANGED]
    return [Event.DERP_MAP_CHANGED]


def stale(change: ch.Change) -> Stale:
    """What ``change`` makes stale: the union of its rows."""
    # On the hot path (every endpoint and online patch): looked up by kind, reason and fields,
    # the only things rows depend on, and computed once per combination.
    key = (type(change), getattr(change, "why", None), getattr(change, "fields", None))
    row = _CACHE.get(key)
    if row is None:
        row = _CACHE[key] = _union(events_of(change))
    return row


def _union(events: list[Event]) -> Stale:
    own = viewers = everyone = Output.NONE
    for event in events:
        row = TABLE[event]
        own, viewers, everyone = own | row.own, viewers | row.viewers, everyone | row.everyone
    return Stale(own, viewers, everyone)


# Bounded by the kinds x reasons x patch-field combinations (a few dozen); a pure function of
# constants, so one cache serves every server in the process.
_CACHE: dict[tuple[type, object, object], Stale] = {}
