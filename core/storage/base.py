"""The Storage protocol: what a backend (SQLite, PostgreSQL, ...) must do.

State lives in memory; the database is read once at start-up (``load``) and written through
afterwards (``apply``), each call one transaction: either every op lands or none does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from meshscale.state.models import ApiKey, Node, PreAuthKey, User


@dataclass(frozen=True, slots=True)
class PutUser:
    user: User


@dataclass(frozen=True, slots=True)
class DeleteUser:
    user_id: int


@dataclass(frozen=True, slots=True)
class PutKey:
    key: PreAuthKey


@dataclass(frozen=True, slots=True)
class DeleteKey:
    key_id: int


@dataclass(frozen=True, slots=True)
class PutNode:
    node: Node


@dataclass(frozen=True, slots=True)
class DeleteNode:
    node_id: int


@dataclass(frozen=True, slots=True)
class PutPolicy:
    text: str


@dataclass(frozen=True, slots=True)
class PutCounter:
    """Raise the high-water mark of IDs of one kind ("user", "key", "node")."""

    name: str
    value: int


@dataclass(frozen=True, slots=True)
class PutApiKey:
    key: ApiKey


@dataclass(frozen=True, slots=True)
class DeleteApiKey:
    key_id: int


@dataclass(frozen=True, slots=True)
class PutSetting:
    """A run-time setting (``dns``: the admin API's DNS settings) as JSON; None deletes it."""

    name: str
    value: str | None


@dataclass(frozen=True, slots=True)
class Setting:
    value: str
    updated_at: datetime


Op = (PutUser | DeleteUser | PutKey | DeleteKey | PutNode | DeleteNode | PutPolicy | PutCounter
      | PutApiKey | DeleteApiKey | PutSetting)


@dataclass(slots=True)
class Snapshot:
    users: list[User] = field(default_factory=list)
    keys: list[PreAuthKey] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    policy: str | None = None
    counters: dict[str, int] = field(default_factory=dict)  # highest ID ever used, per kind
    api_keys: list[ApiKey] = field(default_factory=list)
    settings: dict[str, Setting] = field(default_factory=dict)


class Storage(Protocol):
    def load(self) -> Snapshot:
        """Everything stored, for start-up."""

    def apply(self, ops: Sequence[Op]) -> None:
        """Write ``ops`` in one transaction; raise StorageError and write nothing on failure."""

    def close(self) -> None: ...

    # Optional: a backend whose database can go away (PostgreSQL) also has a bool property
    # ``available``, False while it refuses writes; /health then answers 503.
