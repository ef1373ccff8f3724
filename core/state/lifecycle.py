"""The node lifecycle: the one place nodes and users are created, expired, logged out and deleted.

Registration, the admin API and (later) login providers and the REST API call this; none of
them reaches into the control plane or emits an event itself. Each step changes state (which
emits the change events the mapper turns into deltas), tells plugins (``meshscale_node_event``,
``meshscale_user_event``) and writes the operator's audit line. Ephemeral-node garbage collection
and the key-expiry schedule live here because they are lifecycle steps that no request starts.

Map streams report ``opened()`` and ``closed()``: online/offline and the ephemeral inactivity
timer follow from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from meshscale.events import (
    MapStreamEvent,
    NodeEvent,
    NodeEventKind,
    UserEvent,
    UserEventKind,
)
from meshscale.state.models import Node, PreAuthKey, User, utcnow

if TYPE_CHECKING:
    from meshscale.auth import Identity
    from meshscale.config import Config
    from meshscale.hookcalls import HookCalls
    from meshscale.state.store import State

log = logging.getLogger(__name__)
# One INFO line per lifecycle step an operator wants in the log: registered, logged out, expired,
# deleted, routes approved. Each names the node and its user (or tags), never a key.
audit_log = logging.getLogger("meshscale.audit")


def _waiting(node: Node) -> str:
    return "" if node.approved else ", waits for approval (meshscale nodes approve)"


class NodeLifecycle:
    """One per server, next to its State."""

    def __init__(self, config: Config, state: State, hooks: HookCalls) -> None:
        self.config = config
        self.state = state
        self.hooks = hooks
        # Called with a node's id after it is deleted: per-node state kept elsewhere (the
        # control plane's rate limiter) is dropped with it.
        self.on_delete: list[Callable[[int], None]] = []
        self._ephemeral_timers: dict[int, asyncio.TimerHandle] = {}
        self._expiry_heap: list[tuple[datetime, int]] = []
        self._expiry_wakeup = asyncio.Event()

    # -- events ----------------------------------------------------------------------------------

    def node_event(self, kind: NodeEventKind, node: Node) -> None:
        """Tell plugins; a node with a key expiry joins the expiry schedule."""
        self.hooks.node_event(NodeEvent(
            kind=kind,
            node_id=node.id,
            hostname=node.hostname,
            given_name=node.given_name,
            user=self.state.owner_name(node),
            tags=tuple(node.tags),
            addresses=node.addresses,
        ))
        if node.expiry is not None:
            self.watch_expiry(node)

    def _audit(self, node: Node, what: str) -> None:
        owner = self.state.owner_name(node)
        who = f"user {owner}" if owner else f"tags {','.join(node.tags) or '-'}"
        audit_log.info("node %d %s (%s, %s): %s", node.id, node.given_name, who,
                       node.ipv4 or node.ipv6 or "no address", what)

    # -- nodes -----------------------------------------------------------------------------------

    def register_with_key(
        self,
        key: PreAuthKey,
        machine_key: bytes,
        node_key: bytes,
        hostinfo: dict[str, Any],
        tags: Sequence[str],
        capver: int,
    ) -> Node:
        """Create a node, or log this machine's node in again, consuming ``key``."""
        existed = self.state.by_machine_key(machine_key) is not None
        node = self.state.register_with_key(key, machine_key, node_key, hostinfo, tags, capver)
        self.node_event(NodeEventKind.UPDATED if existed else NodeEventKind.REGISTERED, node)
        manual = self.config.node.approval == "manual"
        how = " (pre-approved key)" if key.preauthorized and manual and not existed else ""
        self._audit(node, ("logged in again" if existed else "registered") + how
                    + ("" if key.preauthorized else _waiting(node)))
        if key.preauthorized and not node.approved:  # it waited; its new key lets it in
            node = self.approve(node.id, by="its pre-approved pre-auth key")
        return node

    def register_for_user(
        self,
        user: User | None,
        machine_key: bytes,
        node_key: bytes,
        hostinfo: dict[str, Any],
        tags: Sequence[str],
        capver: int,
        method: str,
    ) -> Node:
        """Create a node, or log this machine's node in again, for a login without a key
        (``method``: "cli" for an admin's command, or a login provider's name)."""
        existed = self.state.by_machine_key(machine_key) is not None
        node = self.state.register_for_user(user.id if user else None, machine_key, node_key,
                                            hostinfo, tags, capver, method)
        self.node_event(NodeEventKind.UPDATED if existed else NodeEventKind.REGISTERED, node)
        self._audit(node, f"{'logged in again' if existed else 'registered'} ({method})"
                          + _waiting(node))
        return node

    def approve(self, node_id: int, by: str = "an admin") -> Node:
        """A node that waits for approval (``node.approval: manual``) joins the tailnet."""
        node = self.state.set_approved(node_id, True)
        self.node_event(NodeEventKind.APPROVED, node)
        self._audit(node, f"approved by {by}")
        return node

    def unapprove(self, node_id: int, by: str = "an admin") -> Node:
        """An approved node leaves the tailnet and waits for approval again: its peers drop it
        at once and it sees none of them (as ``approve``, reversed)."""
        node = self.state.set_approved(node_id, False)
        self.node_event(NodeEventKind.UNAPPROVED, node)
        self._audit(node, f"unapproved by {by}, waits for approval (meshscale nodes approve)")
        return node

    def rotate_key(self, node: Node, new_key: bytes) -> Node:
        return self.state.rotate_node_key(node, new_key)

    def logout(self, node: Node) -> Node | None:
        """The client logged out: its key expires; an ephemeral node is deleted (None)."""
        if node.ephemeral:
            self.delete(node.id, "logged out (ephemeral: deleted)")
            return None
        return self.expire(node.id, why="logged out")

    def expire(self, node_id: int, when: datetime | None = None, why: str = "") -> Node:
        """Expire the node's key now, or schedule it for ``when``."""
        node = self.state.expire_node(node_id, when)
        if node.expired():
            self.node_event(NodeEventKind.EXPIRED, node)
        else:
            self.watch_expiry(node)
        if why:
            self._audit(node, why)
        return node

    def delete(self, node_id: int, why: str = "") -> Node:
        node = self.state.delete_node(node_id)
        self._cancel_ephemeral(node_id)
        for forget in self.on_delete:
            forget(node_id)
        self.node_event(NodeEventKind.DELETED, node)
        if why:
            self._audit(node, why)
        return node

    def rename(self, node_id: int, new_name: str) -> Node:
        node = self.state.rename_node(node_id, new_name)
        self.node_event(NodeEventKind.UPDATED, node)
        return node

    def backfill_addresses(self) -> list[str]:
        """Addresses for nodes missing one; a line per address given."""
        lines = []
        for node, added in self.state.backfill_addresses():
            self.node_event(NodeEventKind.UPDATED, node)
            self._audit(node, f"address {', '.join(added)} backfilled")
            lines += [f"node {node.id} {node.given_name}: added {a}" for a in added]
        return lines

    def never_expire(self, node_id: int) -> Node:
        """The node's key no longer expires (headscale's ``nodes expire --disable``)."""
        node = self.state.expire_node(node_id, never=True)
        self.node_event(NodeEventKind.UPDATED, node)
        self._audit(node, "key expiry disabled by an admin")
        return node

    def set_tags(self, node_id: int, tags: Sequence[str]) -> Node:
        node = self.state.set_tags(node_id, tags)
        self.node_event(NodeEventKind.UPDATED, node)
        self._audit(node, f"tags set to {', '.join(node.tags) or 'none'}")
        return node

    def approve_routes(self, node_id: int, routes: Sequence[str]) -> Node:
        node = self.state.set_approved_routes(node_id, routes)
        self.node_event(NodeEventKind.UPDATED, node)
        self._audit(node, f"approved routes set to {', '.join(routes) or 'none'}")
        return node

    # -- map streams -----------------------------------------------------------------------------

    def opened(self, node: Node) -> None:
        """A map stream of ``node`` opened: it is online (unless its key expired)."""
        self._cancel_ephemeral(node.id)
        if not node.expired():  # an expired node is not reachable: peers keep it offline
            self.state.set_online(node, True)
            self.node_event(NodeEventKind.ONLINE, node)
        self.hooks.map_stream(MapStreamEvent(node.id, True))

    def closed(self, node_id: int) -> None:
        """The node's current map stream closed (not one a newer stream replaced)."""
        live = self.state.nodes.get(node_id)
        if live is None:
            return
        was_online = live.online
        self.state.set_online(live, False)
        self.hooks.map_stream(MapStreamEvent(node_id, False))
        if was_online:
            self.node_event(NodeEventKind.OFFLINE, live)
        if live.ephemeral:
            self._schedule_ephemeral(live.id)

    # -- users -----------------------------------------------------------------------------------

    def create_user(self, name: str, display_name: str = "", email: str = "") -> User:
        user = self.state.create_user(name, display_name=display_name, email=email)
        self.hooks.user_event(UserEvent(UserEventKind.CREATED, user.id, user.name))
        return user

    def user_for_identity(self, identity: Identity) -> User:
        """The user of a login provider's identity: found by (provider, subject) only, never by
        name or e-mail, so an identity from another provider cannot take over a user; made on
        first login, under its preferred name or, if that is taken, the name with a number."""
        user = self.state.by_identity(identity.provider, identity.subject)
        if user is None and identity.legacy_name:
            user = self._adopt_legacy(identity)
        if user is not None:
            return self.state.refresh_profile(user, identity.display_name, identity.email,
                                              identity.picture, identity.groups)
        base = "".join(c for c in identity.name if not c.isspace())[:60] or "user"
        taken = {u.name for u in self.state.users.values()}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        user = self.state.create_user(name, display_name=identity.display_name,
                                      email=identity.email, provider=identity.provider,
                                      provider_id=identity.subject, picture=identity.picture,
                                      groups=identity.groups)
        self.hooks.user_event(UserEvent(UserEventKind.CREATED, user.id, user.name))
        return user

    def _adopt_legacy(self, identity: Identity) -> User | None:
        """headscale's map_legacy_users: the user named ``identity.legacy_name`` that no login
        identity owns yet (from before logins were bound to identities, e.g. imported from an
        old headscale) becomes this identity's user, once; an audit line says so."""
        legacy = next((u for u in self.state.users.values()
                       if u.name == identity.legacy_name and not u.provider_id), None)
        if legacy is None:
            return None
        user = self.state.bind_identity(legacy, identity.provider, identity.subject)
        audit_log.info("user %d %s: bound to login identity %s (map_legacy_users)", user.id,
                       user.name, identity.subject)
        return user

    def rename_user(self, ref: str | int, new_name: str) -> User:
        user = self.state.rename_user(ref, new_name)
        self.hooks.user_event(UserEvent(UserEventKind.RENAMED, user.id, user.name))
        return user

    def delete_user(self, ref: str | int) -> User:
        user = self.state.delete_user(ref)
        self.hooks.user_event(UserEvent(UserEventKind.DELETED, user.id, user.name))
        return user

    # -- ephemeral nodes -------------------------------------------------------------------------

    def schedule_offline_ephemerals(self) -> None:
        """At start-up every node is offline: ephemeral ones get their inactivity timer."""
        for node in list(self.state.nodes.values()):
            if node.ephemeral:
                self._schedule_ephemeral(node.id)

    def _schedule_ephemeral(self, node_id: int) -> None:
        self._cancel_ephemeral(node_id)
        loop = asyncio.get_running_loop()
        delay = float(self.config.node.ephemeral.inactivity_timeout)
        self._ephemeral_timers[node_id] = loop.call_later(delay, self._gc_ephemeral, node_id)

    def _cancel_ephemeral(self, node_id: int) -> None:
        timer = self._ephemeral_timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()

    def _gc_ephemeral(self, node_id: int) -> None:
        self._ephemeral_timers.pop(node_id, None)
        node = self.state.nodes.get(node_id)
        if node is not None and node.ephemeral and not node.online:
            try:
                self.delete(node_id, "deleted (ephemeral, inactive)")
            except Exception:
                log.exception("could not delete ephemeral node %s", node_id)

    # -- key expiry ------------------------------------------------------------------------------

    def watch_expiry(self, node: Node) -> None:
        if node.expiry is not None and not node.expired():
            heapq.heappush(self._expiry_heap, (node.expiry, node.id))
            self._expiry_wakeup.set()

    async def run_expiry(self) -> None:
        """Tell peers (and the node) when a node key passes its expiry."""
        for node in self.state.nodes.values():
            self.watch_expiry(node)
        while True:
            self._expiry_wakeup.clear()
            delay = 3600.0
            now = utcnow()
            while self._expiry_heap and self._expiry_heap[0][0] <= now:
                when, node_id = heapq.heappop(self._expiry_heap)
                due = self.state.nodes.get(node_id)
                if due is not None and due.expiry == when:
                    self.state.expire_node(node_id, when)
                    self.node_event(NodeEventKind.EXPIRED, due)
                    self._audit(due, "key expired")
            if self._expiry_heap:
                delay = min(delay, (self._expiry_heap[0][0] - now).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._expiry_wakeup.wait(), max(delay, 0.05))
