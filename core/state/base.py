"""The part of State every other part builds on: its tables, indexes, storage and listeners.

State is split by concept into a chain of classes, each in its own module: this base; the policy
bridge (state/policyview.py: the nodes as policy sees them, auto-approvals, the route table);
users and pre-auth keys (state/accounts.py); the admin's changes to nodes (state/nodeadmin.py);
nodes, their registration and updates (state/store.py, whose ``State`` is the whole). Every
mutation first computes the new records, writes them to storage in one transaction and only then
changes memory, so a failed write changes nothing. There is no ``await`` inside a mutation: on
one event loop that makes check-and-consume of a single-use key atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meshscale import keyhash
from meshscale.config import Config
from meshscale.errors import NotFoundError
from meshscale.state.changes import (
    Change,
    NodeChanged,
    Why,
)
from meshscale.state.ipalloc import IPAllocator
from meshscale.state.models import Node, PreAuthKey, User
from meshscale.storage.base import (
    Op,
    PutCounter,
    Storage,
)

Listener = Callable[[Change], None]


class StateBase:
    """Tables and indexes of users, keys and nodes; writes; change listeners; lookups."""

    def __init__(self, config: Config, storage: Storage) -> None:
        self.config = config
        self.storage = storage
        self.users: dict[int, User] = {}
        self.keys: dict[int, PreAuthKey] = {}
        self.nodes: dict[int, Node] = {}
        self._by_node_key: dict[bytes, Node] = {}
        self._by_machine_key: dict[bytes, Node] = {}
        self._given_names: set[str] = set()
        # Nodes waiting for an admin's approval (node.approval: manual): in no peer's map, not
        # in the policy's view of the tailnet, serving no routes. Usually empty.
        self.pending: set[int] = set()
        self.v4 = IPAllocator(config.prefixes.v4, config.prefixes.allocation)
        self.v6 = IPAllocator(config.prefixes.v6, config.prefixes.allocation)
        self._listeners: list[Listener] = []
        self._hwm: dict[str, int] = {}  # highest ID ever given out, per kind
        self._bcrypt_budget = keyhash.BcryptBudget()  # pre-auth keys imported from headscale

    def _next_id(self, kind: str, live: dict[int, Any]) -> tuple[int, PutCounter]:
        """A new ID of ``kind``, above every ID ever given out (tailcfg: never reused); the
        caller writes the counter op with the record and then sets ``_hwm[kind]``."""
        new = max(self._hwm.get(kind, 0), max(live, default=0)) + 1
        return new, PutCounter(kind, new)

    def highest_node_id(self) -> int:
        """The highest node ID ever given out (IDs are never reused)."""
        return max(self._hwm.get("node", 0), max(self.nodes, default=0))

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, change: Change) -> None:
        for listener in self._listeners:
            listener(change)

    def publish(self, change: Change) -> None:
        """Send a change that starts outside state (the policy or DERP map changed) down the
        same path as state's own: to every subscriber, the mapper first."""
        self._emit(change)

    def _write(self, ops: Sequence[Op]) -> None:
        self.storage.apply(ops)

    def _index(self, n: Node) -> None:
        self.nodes[n.id] = n
        self._by_node_key[n.node_key] = n
        self._by_machine_key[n.machine_key] = n
        self._given_names.add(n.given_name)
        if n.approved:
            self.pending.discard(n.id)
        else:
            self.pending.add(n.id)
        self.v4.reserve(n.ipv4)
        self.v6.reserve(n.ipv6)

    def _unindex(self, n: Node) -> None:
        self.nodes.pop(n.id, None)
        if self._by_node_key.get(n.node_key) is n:
            del self._by_node_key[n.node_key]
        if self._by_machine_key.get(n.machine_key) is n:
            del self._by_machine_key[n.machine_key]
        self._given_names.discard(n.given_name)
        self.pending.discard(n.id)
        self.v4.release(n.ipv4)
        self.v6.release(n.ipv6)

    def _replace(self, old: Node, new: Node) -> None:
        """A node's new record in place of its old one (online is memory's, not stored)."""
        new.online = old.online
        self._unindex(old)
        self._index(new)

    @staticmethod
    def serving(n: Node) -> bool:
        """May the node serve its routes now: online, approved, key not expired."""
        return n.online and n.approved and not n.expired()

    # -- nodes: lookups --------------------------------------------------------------------------

    def by_node_key(self, key: bytes) -> Node | None:
        return self._by_node_key.get(key)

    def by_machine_key(self, key: bytes) -> Node | None:
        return self._by_machine_key.get(key)

    def node(self, node_id: int) -> Node:
        n = self.nodes.get(node_id)
        if n is None:
            raise NotFoundError(f"node {node_id} not found")
        return n

    def owner(self, user_id: int | None) -> User | None:
        """The user of a node or key; None for tagged ones (and a user deleted meanwhile)."""
        return self.users.get(user_id) if user_id is not None else None

    def owner_name(self, node: Node) -> str | None:
        u = self.owner(node.user_id)
        return u.name if u else None

    def _emit_changed(self, ids: Iterable[int]) -> None:
        for i in sorted(ids):
            if i in self.nodes:
                self._emit(NodeChanged(i, Why.PRIMARY_ROUTES))

    # -- queries -----------------------------------------------------------------------------------

    def nodes_sorted(self) -> list[Node]:
        return [self.nodes[i] for i in sorted(self.nodes)]

    def user_nodes(self, user_id: int) -> Iterable[Node]:
        return (n for n in self.nodes.values() if n.user_id == user_id)
