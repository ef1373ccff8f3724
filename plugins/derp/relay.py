"""The relay's routing state, sans-IO: who is connected, where packets go, who hears of whom.

``Relay.handle_frame`` applies one client frame; every effect is a frame appended to some
connection's queues (``Conn``), which the asyncio adapter drains onto the socket. Nothing here
awaits or touches a socket, so the whole forwarding logic is tested synchronously.

Queues are bounded per destination and drop the *oldest* packet when full: a slow reader never
blocks a sender, and fresh packets (what WireGuard wants) win over stale ones. Disco packets get
their own queue so a flood of data cannot push out path discovery.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from meshscale.errors import ProtocolError
from meshscale.plugins.derp import frames
from meshscale.plugins.derp.frames import Frame, FrameType, PeerGoneReason, PeerPresentFlags
from meshscale.plugins.derp.handshake import ClientInfo

log = logging.getLogger(__name__)

#: Packets queued per destination connection (Go's derper uses 32 as well).
DEFAULT_QUEUE_DEPTH = 32

_RECV_HEADER = frames.header  # bound once: called per relayed packet

Forwarder = Callable[[bytes, bytes, bytes], None]  # (src, dst, packet) -> None; never blocks


def _noop() -> None:
    return None


@dataclass(slots=True)
class Stats:
    packets_recv: int = 0
    bytes_recv: int = 0
    packets_queued: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    dropped_unknown_dest: int = 0
    dropped_queue_full: int = 0
    dropped_gone: int = 0
    forwarded_in: int = 0
    forwarded_out: int = 0
    accepts: int = 0
    refused: int = 0
    protocol_errors: int = 0


class _TokenBucket:
    """Rate limit for PeerGone(not here) replies: ~1 per second, burst 3 (as Go's derper)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Conn:
    """One client connection as the relay sees it. The adapter sets ``wake`` and ``on_close``."""

    __slots__ = (
        "can_mesh",
        "closed",
        "conn_id",
        "control",
        "disco",
        "info",
        "key",
        "on_close",
        "packets",
        "peer_gone_limit",
        "pong_pending",
        "preferred",
        "remote",
        "saw_src",
        "wake",
        "watching",
    )

    def __init__(
        self,
        key: bytes,
        info: ClientInfo,
        remote: tuple[str, int],
        *,
        can_mesh: bool = False,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        now: float = 0.0,
    ) -> None:
        self.key = key
        self.info = info
        self.remote = remote
        self.can_mesh = can_mesh
        self.conn_id = 0
        self.preferred = False
        self.watching = False
        self.closed = False
        self.pong_pending = False
        # deque(maxlen) drops from the far end on append: exactly "drop oldest".
        self.packets: deque[bytes] = deque(maxlen=queue_depth)
        self.disco: deque[bytes] = deque(maxlen=queue_depth)
        # Control frames (pong, peer gone/present, keep-alive, health) are few and must not be
        # dropped: a mesh watcher relies on seeing every PeerGone.
        self.control: deque[bytes] = deque()
        self.saw_src: set[bytes] = set()
        self.peer_gone_limit = _TokenBucket(1.0, 3, now)
        self.wake: Callable[[], None] = _noop
        self.on_close: Callable[[], None] = _noop

    def has_pending(self) -> bool:
        return bool(self.control or self.disco or self.packets)

    def queue_control(self, frame: bytes) -> None:
        if self.closed:
            return
        self.control.append(frame)
        self.wake()

    def take(self) -> tuple[list[bytes], int]:
        """Everything queued, control first; and how many of those frames are packets."""
        out = list(self.control)
        self.control.clear()
        self.pong_pending = False
        n = len(self.disco) + len(self.packets)
        if self.disco:
            out.extend(self.disco)
            self.disco.clear()
        if self.packets:
            out.extend(self.packets)
            self.packets.clear()
        return out, n

    def presence_flags(self) -> PeerPresentFlags:
        flags = PeerPresentFlags(0)
        if self.info.is_prober:
            flags |= PeerPresentFlags.PROBER
        if self.can_mesh:
            flags |= PeerPresentFlags.MESH_PEER
        return flags or PeerPresentFlags.REGULAR

    def __repr__(self) -> str:
        return f"<derp conn {self.conn_id} {self.key.hex()[:8]} {self.remote[0]}:{self.remote[1]}>"


@dataclass(slots=True)
class _ClientSet:
    """All connections of one key; ``active`` receives its packets."""

    conns: list[Conn] = field(default_factory=list)
    active: Conn | None = None


class Relay:
    def __init__(
        self,
        server_public: bytes,
        *,
        mesh_key: bytes | None = None,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server_public = server_public
        self.mesh_key = mesh_key
        self.queue_depth = queue_depth
        self.clock = clock
        self.stats = Stats()
        self._clients: dict[bytes, _ClientSet] = {}
        # src key -> connections that received packets from it (they get PeerGone when it goes).
        self._gone_watchers: dict[bytes, set[Conn]] = {}
        # Mesh clients that sent WatchConns.
        self._watchers: set[Conn] = set()
        # Keys connected to other servers of our region, reached through a mesh forwarder.
        self._remote: dict[bytes, Forwarder] = {}
        self._next_id = 0

    # -- connections --------------------------------------------------------------------------

    def is_mesh_peer(self, info: ClientInfo) -> bool:
        if self.mesh_key is None or not info.mesh_key:
            return False
        try:
            theirs = bytes.fromhex(info.mesh_key)
        except ValueError:
            return False
        return hmac.compare_digest(theirs, self.mesh_key)

    def new_conn(self, key: bytes, info: ClientInfo, remote: tuple[str, int]) -> Conn:
        return Conn(
            key,
            info,
            remote,
            can_mesh=self.is_mesh_peer(info),
            queue_depth=self.queue_depth,
            now=self.clock(),
        )

    def register(self, conn: Conn) -> None:
        self._next_id += 1
        conn.conn_id = self._next_id
        self.stats.accepts += 1
        cs = self._clients.get(conn.key)
        if cs is None:
            cs = self._clients[conn.key] = _ClientSet()
        cs.conns.append(conn)
        cs.active = conn  # the newest connection of a key is active until a duplicate speaks
        self._broadcast(frames.peer_present(conn.key, conn.remote[0], conn.remote[1],
                                            conn.presence_flags()))

    def unregister(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.stats.dropped_gone += len(conn.packets) + len(conn.disco)
        conn.packets.clear()
        conn.disco.clear()
        conn.control.clear()
        self._watchers.discard(conn)
        for src in conn.saw_src:
            watchers = self._gone_watchers.get(src)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self._gone_watchers[src]
        conn.saw_src.clear()
        cs = self._clients.get(conn.key)
        if cs is None or conn not in cs.conns:
            return
        cs.conns.remove(conn)
        if cs.conns:
            if cs.active is conn:
                cs.active = cs.conns[-1]
            return
        del self._clients[conn.key]
        self._broadcast(frames.peer_gone(conn.key, PeerGoneReason.DISCONNECTED))
        if conn.key not in self._remote:
            self._peer_gone_from_region(conn.key)

    def close_all(self) -> None:
        for cs in list(self._clients.values()):
            for conn in list(cs.conns):
                conn.on_close()

    def is_connected(self, key: bytes) -> bool:
        cs = self._clients.get(key)
        return cs is not None and cs.active is not None

    def connection_count(self) -> int:
        return sum(len(cs.conns) for cs in self._clients.values())

    def home_client_count(self) -> int:
        return sum(1 for cs in self._clients.values() for c in cs.conns if c.preferred)

    # -- mesh: keys present on other servers of the region ------------------------------------

    def add_remote(self, key: bytes, forwarder: Forwarder) -> None:
        self._remote[key] = forwarder

    def remove_remote(self, key: bytes, forwarder: Forwarder) -> None:
        if self._remote.get(key) is forwarder:
            del self._remote[key]
            if key not in self._clients:
                self._peer_gone_from_region(key)

    # -- frames from a client -----------------------------------------------------------------

    def handle_frame(self, conn: Conn, frame: Frame) -> None:
        """Apply one frame from ``conn``. ProtocolError means: close this connection."""
        ftype = frame.type
        if ftype == FrameType.SEND_PACKET:
            dst, packet = frames.parse_send_packet(frame.payload)
            self._note_activity(conn)
            self.stats.packets_recv += 1
            self.stats.bytes_recv += len(packet)
            self._route(conn, conn.key, dst, packet)
        elif ftype == FrameType.PING:
            data = frames.parse_ping(frame.payload)
            self._note_activity(conn)
            if not conn.pong_pending:  # pinging faster than we write: ignore (as Go does)
                conn.pong_pending = True
                conn.queue_control(frames.pong(data))
        elif ftype == FrameType.NOTE_PREFERRED:
            conn.preferred = frames.parse_note_preferred(frame.payload)
            self._note_activity(conn)
        elif ftype == FrameType.FORWARD_PACKET:
            self._require_mesh(conn, "ForwardPacket")
            src, dst, packet = frames.parse_forward_packet(frame.payload)
            self.stats.forwarded_in += 1
            self._deliver_local(conn, src, dst, packet)
        elif ftype == FrameType.WATCH_CONNS:
            if frame.payload:
                raise ProtocolError("WatchConns carries no payload")
            self._require_mesh(conn, "WatchConns")
            self._add_watcher(conn)
        elif ftype == FrameType.CLOSE_PEER:
            key = frames.parse_key(frame.payload, "ClosePeer")
            self._require_mesh(conn, "ClosePeer")
            cs = self._clients.get(key)
            if cs is not None:
                log.info("derp: %r asked to close %s", conn, key.hex()[:16])
                for target in list(cs.conns):
                    target.on_close()
        # Anything else (Pong, frames only servers send, future types) is skipped, as Go does.

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _require_mesh(conn: Conn, what: str) -> None:
        if not conn.can_mesh:
            raise ProtocolError(f"{what} requires the mesh key")

    def _note_activity(self, conn: Conn) -> None:
        cs = self._clients.get(conn.key)
        # Duplicates: whichever connection of a key spoke last is the one we deliver to.
        if cs is not None and cs.active is not conn and len(cs.conns) > 1:
            cs.active = conn

    def _route(self, sender: Conn, src: bytes, dst: bytes, packet: bytes) -> None:
        cs = self._clients.get(dst)
        target = cs.active if cs is not None else None
        if target is None:
            fwd = self._remote.get(dst)
            if fwd is not None:
                self.stats.forwarded_out += 1
                fwd(src, dst, packet)
                return
            self._drop_unknown(sender, dst, packet)
            return
        self._enqueue(target, src, packet)

    def _deliver_local(self, sender: Conn, src: bytes, dst: bytes, packet: bytes) -> None:
        cs = self._clients.get(dst)
        target = cs.active if cs is not None else None
        if target is None:  # never re-forward to another mesh peer: no loops
            self._drop_unknown(sender, dst, packet)
            return
        self._enqueue(target, src, packet)

    def _drop_unknown(self, sender: Conn, dst: bytes, packet: bytes) -> None:
        self.stats.dropped_unknown_dest += 1
        # Tell the sender its peer is not here, but only for disco (path discovery) and rarely.
        if frames.looks_like_disco(packet) and sender.peer_gone_limit.allow(self.clock()):
            sender.queue_control(frames.peer_gone(dst, PeerGoneReason.NOT_HERE))

    def _enqueue(self, target: Conn, src: bytes, packet: bytes) -> None:
        frame = _RECV_HEADER(FrameType.RECV_PACKET, 32 + len(packet)) + src + packet
        queue = target.disco if frames.looks_like_disco(packet) else target.packets
        if len(queue) == queue.maxlen:
            self.stats.dropped_queue_full += 1
        queue.append(frame)
        self.stats.packets_queued += 1
        if src not in target.saw_src:
            # Once per (source key, destination connection): cheap, and it names who talks to
            # whom through the relay (the interop tests read it to tie relayed traffic to keys).
            log.debug("derp: relaying packets from %s to %r", src.hex()[:16], target)
            target.saw_src.add(src)
            self._gone_watchers.setdefault(src, set()).add(target)
        target.wake()

    def _peer_gone_from_region(self, key: bytes) -> None:
        gone = frames.peer_gone(key, PeerGoneReason.DISCONNECTED)
        for conn in self._gone_watchers.pop(key, ()):
            conn.saw_src.discard(key)
            conn.queue_control(gone)

    def _add_watcher(self, conn: Conn) -> None:
        if conn.key == self.server_public:  # a mesh link to ourselves: nothing to learn
            return
        for key, cs in self._clients.items():
            active = cs.active
            if active is not None:
                conn.queue_control(
                    frames.peer_present(key, active.remote[0], active.remote[1],
                                        active.presence_flags())
                )
        conn.watching = True
        self._watchers.add(conn)

    def _broadcast(self, frame: bytes) -> None:
        for watcher in self._watchers:
            watcher.queue_control(frame)

    def note_sent(self, packets: int, nbytes: int) -> None:
        self.stats.packets_sent += packets
        self.stats.bytes_sent += nbytes
