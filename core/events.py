"""Observe-only events: what happened, for metrics, webhooks and audit plugins.

Events are frozen and carry plain values (never live state objects), so a plugin can queue them
and look at them later. Hooks receiving them must return quickly; slow work belongs on the
plugin's own task.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class NodeEventKind(StrEnum):
    REGISTERED = "registered"  # a new node joined
    UPDATED = "updated"  # renamed, tags changed, key rotated, re-authenticated
    APPROVED = "approved"  # it waited for an admin's approval (node.approval: manual)
    UNAPPROVED = "unapproved"  # an admin took its approval back: it waits again
    EXPIRED = "expired"
    DELETED = "deleted"
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class NodeEvent:
    kind: NodeEventKind
    node_id: int
    hostname: str
    given_name: str
    user: str | None  # owner's name; None for tagged nodes
    tags: tuple[str, ...]
    addresses: tuple[str, ...]


class UserEventKind(StrEnum):
    CREATED = "created"
    RENAMED = "renamed"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class UserEvent:
    kind: UserEventKind
    user_id: int
    name: str


@dataclass(frozen=True, slots=True)
class PolicyEvent:
    ok: bool  # False: a new policy was refused and the old one stays
    source: str  # "file", "database", "startup"
    error: str = ""


class MapKind(StrEnum):
    FULL = "full"
    DELTA = "delta"
    KEEPALIVE = "keepalive"


@dataclass(frozen=True, slots=True)
class MapSent:
    """One message queued to ``streams`` map streams at once (a fan-out is one event)."""

    kind: MapKind
    streams: int
    nbytes: int  # bytes per stream before Noise (length prefix + zstd frame)
    # Time core took to build it: full = compute + serialize the map; delta = from the change
    # reaching the mapper to queued on every stream; keep-alive = 0.
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Registration:
    method: str  # "authkey", "refresh", "rotate", "logout", "interactive"
    result: str  # "ok", "refused", "error"
    seconds: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MapStreamEvent:
    node_id: int
    opened: bool  # False when it closed
