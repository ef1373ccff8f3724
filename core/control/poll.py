"""``/machine/map``: the map endpoint (protocol.md §7).

The body becomes a typed ``MapRequest`` (meshscale.clientinput); then one of three answers: a lite
update (endpoints, disco key, Hostinfo), one map, or a stream: a full map, then the deltas the
mapper queues and keep-alives, until the client goes. What a lite update or a stream request
reports of the node (endpoints, disco key; Hostinfo for a lite one) is rate-limited per node,
since each change fans out to every peer. A stream tells the node lifecycle when it opened and
closed (online, offline, ephemeral inactivity); every change reaches it through state -> mapper,
never from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from meshscale import tailcfg
from meshscale.clientinput import Limits, MapRequest, parse_map
from meshscale.config import Config
from meshscale.control.body import typed_body
from meshscale.control.ratelimit import UpdateLimiter
from meshscale.control.request import ControlRequest, ResponseWriter
from meshscale.errors import StorageError
from meshscale.events import MapKind, MapSent
from meshscale.hookcalls import HookCalls
from meshscale.mapper.frames import KEEPALIVE, Message
from meshscale.mapper.mapper import Mapper
from meshscale.mapper.session import MapSession
from meshscale.state.lifecycle import NodeLifecycle
from meshscale.state.models import Node
from meshscale.state.store import State

log = logging.getLogger(__name__)

KEEPALIVE_BASE = 50.0
KEEPALIVE_JITTER = 9.0
FULL_MAPS_AT_ONCE = 16
# A stream may hold one of the FULL_MAPS_AT_ONCE places this long, plus the map's size at
# FULL_MAP_MIN_RATE: a client that does not take its full map in time (or keeps its HTTP/2
# window shut) is cut off, so it cannot hold the other streams' full maps back for longer, and
# the bytes it left unread are freed; a client on a slow link (a 1.4 MB map of 10,000 peers
# over 128 kbit/s) still gets its map.
FULL_MAP_DEADLINE = 30.0
FULL_MAP_MIN_RATE = 16 << 10  # bytes per second
QUEUE_WRITE = 32 << 10  # queued deltas are written this many bytes at a time (see _stream)


class MapPoll:
    """One per server: serves every ``/machine/map`` request."""

    def __init__(
        self,
        config: Config,
        state: State,
        mapper: Mapper,
        hooks: HookCalls,
        lifecycle: NodeLifecycle,
        limits: Limits,
    ) -> None:
        self.state = state
        self.mapper = mapper
        self.hooks = hooks
        self.lifecycle = lifecycle
        self.limits = limits
        self.keepalive_base = KEEPALIVE_BASE
        self.full_map_deadline = FULL_MAP_DEADLINE
        self.full_map_min_rate = FULL_MAP_MIN_RATE
        self._full_map_gate = asyncio.Semaphore(FULL_MAPS_AT_ONCE)
        self._limiter = UpdateLimiter(config.client_limits.updates_per_second,
                                      config.client_limits.update_burst)
        # node id -> the latest update held back by the limiter (endpoints, disco, hostinfo).
        self._pending: dict[int, tuple[tuple[str, ...] | None, bytes | None,
                                       dict[str, Any] | None]] = {}
        lifecycle.on_delete.append(self._forget)

    # -- /machine/map ----------------------------------------------------------------------------

    async def handle(self, req: ControlRequest, resp: ResponseWriter) -> None:
        mreq = await typed_body(req, resp, parse_map, self.limits)
        if mreq is None:
            return
        await self.serve(req.machine_key, mreq, resp)

    async def serve(self, machine_key: bytes, mreq: MapRequest, resp: ResponseWriter) -> None:
        """Answer one typed map request: a lite update, one map, or a stream until it closes."""
        if (too_old := tailcfg.too_old(mreq.version)) is not None:
            await resp.send(400, f"{too_old}\n".encode(), "text/plain")
            return
        node_key = mreq.node_key
        node = self.state.by_node_key(node_key) if node_key else None
        if node is None or node.machine_key != machine_key:
            await resp.send(401, b"node key not registered for this machine\n", "text/plain")
            return
        stream = mreq.stream
        expired = node.expired()
        if expired and not stream and mreq.omit_peers:
            # An expired or logged-out node is cut off: nothing it reports reaches its peers.
            await resp.send(403, b"node key expired: log in again\n", "text/plain")
            return
        # Streaming requests may carry stale values (tailcfg: treat them as read-only), but the
        # disco key changes with every client restart and must reach peers: take non-empty ones.
        eps = mreq.endpoints
        try:
            if expired:
                pass  # it gets a map saying so (no peers), and changes nothing
            elif stream:
                # Under the same per-node limit as a lite update: a client may open streams as
                # fast as it likes, and each one's endpoints would fan out to every peer.
                self._client_update(node, eps or None, mreq.disco_key, None)
            else:
                self._client_update(node, eps, mreq.disco_key, mreq.hostinfo)
        except StorageError as exc:  # not stored, so not applied: the client sends it again
            log.error("update from node %d not applied: %s", node.id, exc)
            await resp.send(503, f"{exc}\n".encode(), "text/plain")
            return
        if not stream and mreq.omit_peers:
            await resp.send(200)  # lite update: the body is discarded by the client
            return
        compress = mreq.compress == "zstd"
        if not stream:
            await resp.send(200, self._full_frame(MapSession(node.id, compress)))
            return
        await self._stream(node, compress, resp, keepalive=mreq.keepalive)

    def _client_update(self, node: Node, endpoints: tuple[str, ...] | None,
                       disco: bytes | None, hostinfo: dict[str, Any] | None) -> None:
        """Apply a lite update now, or (over the node's rate) hold the latest one back and
        apply it when the limiter allows: each update fans out to every peer."""
        if endpoints is None and disco is None and hostinfo is None:
            return
        held = node.id in self._pending
        delay = 0.0 if held else self._limiter.take(node.id, time.monotonic())
        if delay == 0.0 and not held:
            self.state.client_update(node, endpoints, disco, hostinfo)
            return
        old = self._pending.get(node.id)
        if old is not None:  # coalesce: newer values win, fields not sent keep the older ones
            endpoints = endpoints if endpoints is not None else old[0]
            disco = disco or old[1]
            hostinfo = hostinfo if hostinfo is not None else old[2]
        self._pending[node.id] = (endpoints, disco, hostinfo)
        if not held:
            asyncio.get_running_loop().call_later(delay, self._apply_pending, node.id)

    def _apply_pending(self, node_id: int) -> None:
        update = self._pending.pop(node_id, None)
        node = self.state.nodes.get(node_id)
        if update is None or node is None or node.expired():
            return
        delay = self._limiter.take(node_id, time.monotonic())
        if delay > 0.0:  # a timer fired early: wait for the token
            self._pending[node_id] = update
            asyncio.get_running_loop().call_later(delay, self._apply_pending, node_id)
            return
        try:
            self.state.client_update(node, *update)
        except StorageError as exc:  # the node's next update carries the same fields again
            log.error("held-back update from node %d not applied: %s", node_id, exc)

    async def _stream(
        self, node: Node, compress: bool, resp: ResponseWriter, keepalive: bool
    ) -> None:
        session = self.mapper.open(node.id, compress)
        self.lifecycle.opened(node)
        session.ticker = asyncio.get_running_loop().call_later(
            self._keepalive_delay(), self._keepalive_tick, session)

        sent = session.sent

        try:
            await resp.start(200)
            # One writer for the stream's life: a delta to a waiting stream then costs little
            # more than its seal and its write.
            write_now = resp.direct_writer()

            def direct(msg: Message) -> bool:
                if write_now is None or not write_now(msg.frame(compress)):
                    return False
                sent["delta"] += 1
                session.sent_since_tick = True
                return True

            while not session.closed:
                if session.needs_full:
                    # Full maps are the big messages (MBs at thousands of nodes): a storm of
                    # new streams builds and sends only a few at a time, so memory stays
                    # bounded however many clients arrive at once.
                    asked = time.monotonic()
                    async with self._full_map_gate:
                        entered = time.monotonic()
                        session.needs_full = False
                        session.queue.clear()
                        parts = self._full_parts(session)
                        size = sum(map(len, parts))
                        built = time.monotonic()
                        async with asyncio.timeout(
                                self.full_map_deadline + size / self.full_map_min_rate):
                            await resp.write(parts)
                        del parts  # do not hold megabytes while the stream idles
                    if self.mapper.trace.on:
                        self.mapper.trace.record("full", node.id, asked, entered, built,
                                                 time.monotonic(), size)
                    session.sent["full"] += 1
                    continue
                if session.queue:
                    # What is queued goes out in writes of about QUEUE_WRITE bytes, each
                    # drained before the next: fewer records and syscalls than one per message,
                    # while a whole backlog at once (up to MAX_BACKLOG shared messages) put a
                    # copy of all of it into a lagging client's transport.
                    queue, size = session.queue, 0
                    frames: list[bytes] = []
                    while queue and size < QUEUE_WRITE:
                        frames.append(frame := queue.popleft().frame(compress))
                        size += len(frame)
                    sent["delta"] += len(frames)
                    session.sent_since_tick = True
                    await resp.write(frames)
                    continue
                if session.keepalive_due:
                    session.keepalive_due = False
                    if keepalive and not session.sent_since_tick:
                        frame = KEEPALIVE.frame(compress)
                        await resp.write(frame)
                        session.sent["keepalive"] += 1
                        self.hooks.map_sent(MapSent(MapKind.KEEPALIVE, 1, len(frame)))
                    session.sent_since_tick = False
                    continue
                session.wakeup.clear()
                # Waiting on the event itself (no wait_for) keeps a wake-up free of task and
                # timer churn: at thousands of streams that is most of a fan-out's cost. The
                # keep-alive comes from one periodic timer per session instead. While it waits,
                # deltas the connection takes at once are written by the mapper directly.
                session.direct = direct
                try:
                    await session.wakeup.wait()
                finally:
                    session.direct = None
        except (ConnectionResetError, LookupError):
            pass
        except TimeoutError:
            log.info("map stream of node %d closed: its full map was not taken in time "
                     "(%.0f s plus 1 s per %d bytes)", node.id, self.full_map_deadline,
                     self.full_map_min_rate)
            resp.abort()
        finally:
            if session.ticker is not None:
                session.ticker.cancel()
            if self.mapper.close(session):  # not replaced by a newer stream of the node
                self.lifecycle.closed(node.id)
            with contextlib.suppress(Exception):
                await resp.end()

    def _full_frame(self, session: MapSession) -> bytes:
        """A full map for ``session``, framed."""
        return b"".join(self._full_parts(session))

    def _full_parts(self, session: MapSession) -> list[bytes]:
        """A full map for ``session`` as the parts of its frame (a stream sends them without
        joining them), with its build time reported to plugins."""
        started = time.monotonic()
        parts = self.mapper.full_map(session).parts(session.compress)
        size = sum(len(p) for p in parts)
        self.hooks.map_sent(MapSent(MapKind.FULL, 1, size, time.monotonic() - started))
        return parts

    def _keepalive_tick(self, session: MapSession) -> None:
        """Every ~50-59 s: ask the writer for a keep-alive (skipped if a delta went out)."""
        session.keepalive_due = True
        session.wakeup.set()
        session.ticker = asyncio.get_running_loop().call_later(
            self._keepalive_delay(), self._keepalive_tick, session)

    def _keepalive_delay(self) -> float:
        return self.keepalive_base + random.random() * KEEPALIVE_JITTER

    def _forget(self, node_id: int) -> None:
        """A deleted node's held-back update and rate state go with it."""
        self._pending.pop(node_id, None)
        self._limiter.forget(node_id)
