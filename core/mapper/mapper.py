"""Change events -> per-node deltas -> shared bytes for every affected stream.

Costs follow architecture.md §3: a change costs in proportion to the peers it reaches; a node's
peer JSON is cached and reused by every full map; a delta is serialized (and compressed) once.
Only a new stream, or one that fell too far behind, gets a full map.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from meshscale.config import Config
from meshscale.dns.model import DnsConfig
from meshscale.events import MapKind, MapSent
from meshscale.looptrace import LoopTrace
from meshscale.mapper import wire
from meshscale.mapper.builder import config_caps, cut_off
from meshscale.mapper.delivery import Delivery
from meshscale.mapper.frames import Message
from meshscale.mapper.invalidation import Output, stale
from meshscale.mapper.pacing import FlushPacer
from meshscale.mapper.parts import FlushParts, Parts
from meshscale.mapper.policydelta import PolicyDelta
from meshscale.mapper.session import MapSession
from meshscale.policy import Affected, PolicyEngine
from meshscale.state import changes as ch
from meshscale.state.store import State

log = logging.getLogger(__name__)

__all__ = ["Mapper", "config_caps"]  # config_caps: where tests have long imported it from


Notify = Callable[[MapSent], None]


class Mapper(FlushParts):
    """The event-loop side: open streams, changes batched per turn, deltas fanned out."""

    def __init__(
        self,
        config: Config,
        state: State,
        engine: PolicyEngine,
        derp_map: Callable[[], Mapping[str, Any]],
        notify: Notify | None = None,
        dns: Callable[[], DnsConfig] | None = None,
        trace: LoopTrace | None = None,
    ) -> None:
        super().__init__(config, state, engine, derp_map, dns)
        self.notify = notify or (lambda _e: None)
        # The server's trace (looptrace.py), also read by its map poll; off by default.
        self.trace = trace if trace is not None else LoopTrace()
        self.sessions: dict[int, MapSession] = {}
        self._change_started = 0.0  # when the change being fanned out reached us (MapSent)
        # Changes of this event-loop turn, delivered together by flush().
        self._pending_patch: dict[int, ch.Patch] = {}
        self._pending_upsert: dict[int, bool] = {}  # node id -> newly added
        self._pending_own: dict[int, Output] = {}  # node id -> what its own stream lacks
        self._pending_remove: dict[int, None] = {}  # deleted node ids, in order
        self._flush_handle: asyncio.Handle | None = None
        self._pacer = FlushPacer()  # when the next flush runs (pacing.py)
        self._flush_waits = False  # the scheduled flush runs after a window
        self._delivery = Delivery(self._delivered_all)  # messages to streams (deliver)
        # The flush whose messages are being delivered, for the pacer: (start, changes,
        # waited, seconds it took apart from pushing). Its cost is that plus the pushing
        # (the delivery's busy time), not the turns of other work between the slices.
        self._delivering: tuple[float, int, bool, float] | None = None
        self._flush_deferred = False  # changes came during a delivery: flush after it
        state.subscribe(self.on_change)

    # -- sessions --------------------------------------------------------------------------------

    def open(self, node_id: int, compress: bool) -> MapSession:
        old = self.sessions.get(node_id)
        if old is not None:
            old.close()  # one stream per node: the newest wins
        s = MapSession(node_id, compress)
        self.sessions[node_id] = s
        return s

    def close(self, s: MapSession) -> bool:
        """Forget ``s``; True if it was the node's current stream."""
        s.close()
        if self.sessions.get(s.node_id) is s:
            del self.sessions[s.node_id]
            return True
        return False

    def stream_count(self) -> int:
        return len(self.sessions)

    def delivering(self) -> bool:
        """Messages are still being handed to streams (deliver)."""
        return bool(self._delivery)

    def idle(self) -> bool:
        """No change waits for delivery: nothing pending, every stream's queue written out."""
        return (self._flush_handle is None and not self._delivery
                and not self._flush_deferred and not self._pending_patch
                and not self._pending_upsert and not self._pending_own
                and not self._pending_remove
                and all(not s.queue and not s.needs_full for s in self.sessions.values()))

    # -- fan-out -----------------------------------------------------------------------------------

    def _send(self, sessions: Iterable[MapSession], msg: Message) -> None:
        sessions = list(sessions)
        count = len(sessions)
        if count:
            self.deliver(sessions, msg)
            seconds = time.monotonic() - self._change_started if self._change_started else 0.0
            self.notify(MapSent(MapKind.DELTA, count, len(msg.frame(True)), seconds))

    def on_change(self, change: ch.Change) -> None:
        self._change_started = time.monotonic()
        try:
            self._on_change(change)
        except Exception:  # a bug here must not break the request that made the change
            log.exception("mapper failed on %r; resyncing all streams", change)
            for s in self.sessions.values():
                s.resync()

    def _on_change(self, change: ch.Change) -> None:
        # What is stale, and for whom, is the invalidation table's decision (invalidation.py).
        rows = stale(change)
        if isinstance(change, (ch.NodeAdded, ch.NodeRemoved)) or (
                isinstance(change, ch.NodeChanged) and change.why is ch.Why.APPROVED):
            self._live = None
        # Node changes wait for the end of this event-loop turn: a storm of N nodes coming
        # online then costs one message per stream per turn, not N (N² in all).
        if isinstance(change, (ch.NodePatched, ch.NodeAdded, ch.NodeChanged)):
            node_id = change.node_id
            if rows.peer or rows.patch:
                self._forget(node_id)  # its cached peer JSON is stale
            if rows.peer:
                added = isinstance(change, ch.NodeAdded) or self._pending_upsert.get(
                    node_id, False)
                self._pending_upsert[node_id] = added
            if rows.patch and isinstance(change, ch.NodePatched):
                self._pending_patch[node_id] = (
                    self._pending_patch.get(node_id, ch.Patch.NONE) | change.fields)
            if rows.own:
                self._pending_own[node_id] = self._pending_own.get(node_id, Output.NONE) | rows.own
            self._schedule_flush()
            return
        if isinstance(change, ch.NodeRemoved):
            # Its peers hear of it with the other changes of the batch (pending changes of
            # the node itself are dropped by the flush: it is gone from the state).
            self._remove_now(change.node_id)
            self._pending_remove[change.node_id] = None
            self._schedule_flush()
            return
        # Everything else is ordered after what is pending.
        self.flush()
        if rows.everyone & Output.PROFILE and isinstance(change, ch.UserChanged):
            u = self.state.users.get(change.user_id)
            if u is not None:
                for n in self.state.user_nodes(u.id):
                    self._forget(n.id)
                self._send(self.sessions.values(),
                           Message.of({"UserProfiles": [wire.user_profile(u)]}))
        if rows.everyone & Output.POLICY and isinstance(change, ch.PolicyChanged):
            self.policy_changed(change.affected)
        if rows.everyone & Output.DERP:
            self._send(self.sessions.values(), Message.of({"DERPMap": self.derp_map()}))
        if rows.everyone & Output.DNS:
            for s, msg in self.dns_changed(list(self.sessions.values())):
                if msg is None:
                    s.resync()
                else:
                    self._send([s], msg)

    def _remove_now(self, node_id: int) -> None:
        """What a deletion changes at once: caches, and the node's own stream ends."""
        self._forget(node_id)
        self._caps.pop(node_id, None)
        own = self.sessions.pop(node_id, None)
        if own is not None:
            own.close()

    def _send_parts(self, batch: list[Parts]) -> None:
        """One message per stream of the parts it gets; streams with the same parts share it."""
        common = [default for default, _ in batch if default is not None]
        special: set[int] = set()
        for _, per in batch:
            special.update(per)
        if common:
            plain = [s for i, s in self.sessions.items() if i not in special]
            self._send(plain, Message(b"{" + b",".join(common) + b"}"))
        groups: dict[tuple[int, ...], tuple[list[bytes], list[MapSession]]] = {}
        for i in special:
            s = self.sessions.get(i)
            if s is None:
                continue
            parts = [p for default, per in batch if (p := per.get(i, default)) is not None]
            if not parts:
                continue
            key = tuple(map(id, parts))
            group = groups.get(key)
            if group is None:
                group = groups[key] = (parts, [])
            group[1].append(s)
        for parts, sessions in groups.values():
            self._send(sessions, Message(b"{" + b",".join(parts) + b"}"))

    def deliver(self, sessions: Sequence[MapSession], msg: Message) -> None:
        """Hand ``msg`` to each stream, after everything handed over before, a slice at a
        time (delivery.py)."""
        self.delivery_seq += 1
        self._delivery.add(self.delivery_seq, sessions, msg)

    def _delivered_all(self) -> None:
        """The last stream has its message: the flush's cost is known; a flush that waited
        for the delivery may be scheduled."""
        if self._delivering is not None:
            start, changes, waited, work = self._delivering
            self._delivering = None
            end = time.monotonic()
            cost = min(work + self._delivery.busy, end - start)
            # As if it had run in one go, ending now: the window (pacing.py) counts from now
            # and lasts ratio times what the flush cost.
            self._pacer.flushed(end - cost, end, changes, waited)
            if self.trace.on:
                self.trace.record("flush", start, end, changes, len(self.sessions),
                                  self._delivery.busy, self._delivery.slices)
        if self._flush_deferred:
            self._flush_deferred = False
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None or self._flush_deferred:
            return
        if self._delivery:
            # The last flush's messages are still going out: this one gathers until then
            # (and its window, below, counts from then).
            self._flush_deferred = True
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools, sync tests): deliver at once
            self.flush()
            return
        # A quiet server delivers at the end of this turn. A busy one gathers changes while
        # the last flush's cost says so (pacing.py), so every stream gets one message for
        # many changes: bounded extra latency, far fewer writes.
        delay = self._pacer.delay(time.monotonic())
        self._flush_waits = delay > 0
        self._flush_handle = (loop.call_later(delay, self.flush) if delay
                              else loop.call_soon(self.flush))

    def flush(self) -> None:
        """Send what this turn's changes mean to every stream, batched per stream."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush_deferred = False
        start = time.monotonic()
        busy = self._delivery.busy
        waited, self._flush_waits = self._flush_waits, False
        patches, self._pending_patch = self._pending_patch, {}
        upserts, self._pending_upsert = self._pending_upsert, {}
        owns, self._pending_own = self._pending_own, {}
        removes, self._pending_remove = list(self._pending_remove), {}
        if not patches and not upserts and not owns and not removes:
            self._pacer.flushed(start, start, 0)
            return
        try:
            # Peers' news, one message per stream: whole nodes, patches, deletions (the
            # deleted are gone from the state: none of their own changes is among the others).
            batch = [self._upsert_parts(upserts), self._patch_parts(patches)]
            if removes:
                batch.append(self._remove_parts(removes))
            self._send_parts(batch)
            self._flush_own(owns)
        except Exception:  # a bug here must not leave clients silently stale
            log.exception("mapper flush failed; resyncing all streams")
            for s in self.sessions.values():
                s.resync()
        changes = len(patches) + len(upserts) + len(removes)
        work = time.monotonic() - start - (self._delivery.busy - busy)
        if not self._delivery:  # all pushed in this turn (and the busy time counted anew)
            work = time.monotonic() - start
        if self._delivering is not None:  # flushed again (synchronously) while delivering
            first, before, waited_before, work_before = self._delivering
            start, changes, waited = first, changes + before, waited or waited_before
            work += work_before
        self._delivering = (start, changes, waited, work)
        if not self._delivery:
            self._delivered_all()

    def _flush_own(self, owns: dict[int, Output]) -> None:
        """What changed nodes' own streams lack: their policy outputs, self Node, profile."""
        delta: PolicyDelta | None = None
        for node_id in sorted(owns):
            node = self.state.nodes.get(node_id)
            s = self.sessions.get(node_id)
            if node is None or s is None:
                continue
            out = owns[node_id]
            if out & Output.SELF and (s.cut_off or cut_off(node)):
                # Expired, logged out or awaiting approval (or back from that): a full map of
                # the new kind. A cut-off stream takes no deltas, so its own news (a new
                # name, an expiry) comes as a small full map too.
                s.resync()
                continue
            if out & Output.POLICY:
                delta = delta or PolicyDelta(self, set())
                delta.refresh(s, node)
            if out & Output.SELF:
                self._view(s).self_sig = self._self_sig(node)
                msg: dict[str, Any] = {"Node": self.self_node(node)}
                if out & Output.PROFILE:
                    msg["UserProfiles"] = self._profiles([node])
                self._send([s], Message.of(msg))

    def _refresh_caps(self, affected: Affected) -> set[int]:
        """Re-read the policy CapMap of affected nodes; return those whose CapMap changed."""
        ids = self.state.nodes if affected.everyone else affected.nodes
        changed: set[int] = set()
        for i in ids:
            if i not in self.state.nodes:
                continue
            caps = self._caps_json(i)
            if self._caps.get(i) != caps:
                self._caps[i] = caps
                changed.add(i)
        return changed

    def policy_changed(self, affected: Affected) -> None:
        """Recompute filter, SSH policy, peers and self node for affected streams; send each
        stream only what differs from what its client holds."""
        caps_changed = self._refresh_caps(affected)
        sessions = (list(self.sessions.values()) if affected.everyone
                    else [self.sessions[i] for i in affected.nodes if i in self.sessions])
        delta = PolicyDelta(self, caps_changed)
        for s in sessions:
            node = self.state.nodes.get(s.node_id)
            if node is not None:
                delta.refresh(s, node)
