"""Typed change events: what state tells the mapper, smallest first.

The mapper turns each into the smallest delta each affected peer needs (architecture.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, Flag, auto

from meshscale.policy import Affected


class Patch(Flag):
    """Fields of a peer that changed and fit a PeersChangedPatch."""

    NONE = 0
    ENDPOINTS = auto()
    DERP = auto()
    DISCO = auto()
    KEY = auto()  # node key rotation
    EXPIRY = auto()
    ONLINE = auto()


@dataclass(frozen=True, slots=True)
class NodeAdded:
    node_id: int


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    node_id: int


class Why(Enum):
    """Why a whole node changed; core/mapper/invalidation.py says what each makes stale."""

    REAUTH = "logged in again"  # owner, tags, key expiry may all be new
    APPROVED = "approved"  # it waited for approval: now it joins its peers' maps
    RENAMED = "renamed"
    HOSTINFO = "hostinfo"
    ROUTES_ADVERTISED = "routes advertised"
    ROUTES_APPROVED = "routes approved"
    PRIMARY_ROUTES = "primary routes moved"  # another router's change re-elected primaries
    OTHER = "other"  # the conservative default: everything a whole node carries


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """Something only a whole-node PeersChanged can express (name, hostinfo, tags, routes)."""

    node_id: int
    why: Why = Why.OTHER


@dataclass(frozen=True, slots=True)
class NodePatched:
    node_id: int
    fields: Patch


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    affected: Affected


@dataclass(frozen=True, slots=True)
class DerpMapChanged:
    pass


@dataclass(frozen=True, slots=True)
class DnsChanged:
    """The DNS settings in force changed (admin API, SIGHUP, the extra records file)."""


@dataclass(frozen=True, slots=True)
class UserChanged:
    user_id: int


Change = (
    NodeAdded | NodeRemoved | NodeChanged | NodePatched | PolicyChanged | DerpMapChanged
    | UserChanged | DnsChanged
)
