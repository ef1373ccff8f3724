"""What a receiver gets: a JSON body, and a signature over exactly those bytes.

    {"id": "4f0c...", "seq": 7, "type": "node.online", "time": "2025-01-01T12:00:00.123Z",
     "data": {"node_id": 3, "hostname": "web", ...}}

``X-Meshscale-Signature: sha256=<hex HMAC-SHA256(secret, body)>``. Verify it in constant time
(``hmac.compare_digest``) before trusting the body; reject old ``time`` values to stop replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meshscale.events import NodeEvent, NodeEventKind, PolicyEvent, UserEvent, UserEventKind

SIGNATURE_HEADER = "X-Meshscale-Signature"

NODE_TYPES = {
    NodeEventKind.REGISTERED: "node.registered",
    # It waited for device approval (node.approval: manual) and was let in: by an admin, or by
    # logging in again with a pre-approved key. A node that joins approved gets none.
    NodeEventKind.APPROVED: "node.approved",
    # An admin took an approved node's approval back: it waits again, its peers dropped it.
    NodeEventKind.UNAPPROVED: "node.unapproved",
    NodeEventKind.DELETED: "node.deleted",
    NodeEventKind.ONLINE: "node.online",
    NodeEventKind.OFFLINE: "node.offline",
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event to deliver. Built in the hook (cheap); serialized by the delivery task."""

    type: str
    data: dict[str, Any]
    seq: int
    time: str = field(default_factory=_now)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def body(self) -> bytes:
        return json.dumps({"id": self.id, "seq": self.seq, "type": self.type,
                           "time": self.time, "data": self.data},
                          separators=(",", ":")).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def node_data(event: NodeEvent) -> dict[str, Any]:
    return {"node_id": event.node_id, "hostname": event.hostname,
            "given_name": event.given_name, "user": event.user, "tags": list(event.tags),
            "addresses": list(event.addresses)}


def from_node(event: NodeEvent) -> tuple[str, dict[str, Any]] | None:
    kind = NODE_TYPES.get(event.kind)
    return None if kind is None else (kind, node_data(event))


def from_user(event: UserEvent) -> tuple[str, dict[str, Any]] | None:
    if event.kind is not UserEventKind.CREATED:
        return None
    return "user.created", {"user_id": event.user_id, "name": event.name}


def from_policy(event: PolicyEvent) -> tuple[str, dict[str, Any]] | None:
    if not event.ok:
        return None  # a refused policy changes nothing
    return "policy.changed", {"source": event.source}
