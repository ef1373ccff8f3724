"""The owner's side of its connection workers: start them, hand them sockets, talk to them.

Each worker is a fresh interpreter (``python -m meshscale.workers.main``) given two inherited
sockets: a stream socket for the messages of codec.py, and a SOCK_SEQPACKET one on which each
handed-over client socket travels (SCM_RIGHTS) with its adoption message, so the descriptor and
its bytes arrive together. Secrets (the Noise key) go over the socket in HELLO, never in argv
or the environment.

Batching is the point of the design: ``batch`` is what a RemoteConnection's direct writer calls
per recipient; it only appends the stream's key to the list of that frame, and at the end of
the loop turn each distinct frame goes to the worker as ONE message with all its recipients. A
message written any other way to a worker first flushes that worker's batch, so what one stream
receives keeps its order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import sys
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.config import LimitsConfig
from meshscale.control.request import Handler
from meshscale.workers import codec
from meshscale.workers.chunks import CACHE_BYTES, ChunkMirror
from meshscale.workers.remote import RemoteConnection

log = logging.getLogger(__name__)

STOP_GRACE = 5.0  # a worker told to stop is killed if still there after this
RESPAWN_DELAY = 1.0  # a worker that died is replaced after this (not in a tight loop)
# Bytes the owner lets wait for one worker (its transport's buffer plus the pending batch) before
# the direct writers of that worker's streams refuse: the mapper then queues the deltas per
# stream (bounded by its MAX_BACKLOG, then a full map) and writes them acknowledged, as for a
# slow local connection. Without it a fan-out storm to a stalled worker grew the owner's memory
# by every delta to every one of its streams.
WRITE_HIGH = 1 << 20
# The heartbeat: every HEARTBEAT_INTERVAL the owner sends each worker PING; a worker that has not
# answered one within HEARTBEAT_DEADLINE is hung (stopped, deadlocked, stuck in a loop: alive to
# the kernel, so its socket never closes) and is killed and replaced as a dead one is; its
# clients' sockets close with it and they reconnect. A busy worker answers within a loop turn
# (milliseconds, tens at 10,000 nodes), so the deadline is far from any honest delay.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_DEADLINE = 15.0


class WorkerLink(asyncio.Protocol):
    """One worker process: its sockets, its connections, its pending fan-out batch."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.transport: asyncio.Transport | None = None
        self.adopt_sock: socket.socket | None = None
        self.conns: dict[int, RemoteConnection] = {}
        self.decoder = codec.Decoder(codec.TO_OWNER)
        self.alive = False
        # id(frame) -> (frame, keys); the frame object is held, so its id stays unique.
        self._pending: dict[int, tuple[bytes, list[bytes]]] = {}
        self._pending_bytes = 0
        self.paused = False  # the transport holds over WRITE_HIGH (asyncio's flow control)
        self._loop = asyncio.get_running_loop()
        self.messages_out = 0  # for tests and the bench: how many messages were written
        self.chunks = ChunkMirror(CACHE_BYTES)  # the shared chunks the worker holds
        self.ping_seq = 0
        self.ping_sent: float | None = None  # when the unanswered PING went out
        self.hung = False

    async def start(self) -> None:
        ctrl, ctrl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        adopt, adopt_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshscale.workers.main",
                str(ctrl_child.fileno()), str(adopt_child.fileno()),
                logging.getLevelName(logging.getLogger("meshscale").getEffectiveLevel()),
                self.pool.log_format,
                pass_fds=(ctrl_child.fileno(), adopt_child.fileno()),
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            ctrl_child.close()
            adopt_child.close()
        adopt.setblocking(False)
        self.adopt_sock = adopt
        await self._loop.create_unix_connection(lambda: self, sock=ctrl)
        self.alive = True
        self.send(codec.hello(self.pool.key_bytes, self.pool.limits_json))

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # asyncio calls pause_writing/resume_writing as the buffer crosses these: congested()
        # then reads a flag, as it is asked once per recipient of a fan-out.
        transport.set_write_buffer_limits(high=WRITE_HIGH)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.decoder.feed(data)
        except codec.IpcError as exc:
            log.error("worker %d sent a bad message (%s): closing it", self.index, exc)
            self.kill()
            return
        for m in msgs:
            self._dispatch(m)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.died(self)

    def _dispatch(self, m: codec.Msg) -> None:
        if m.kind == codec.PONG:
            if m.value == self.ping_seq:
                self.ping_sent = None
            return
        conn = self.conns.get(m.conn)
        if conn is None:
            return  # a connection already given up (ABORT crossed the worker's message)
        kind = m.kind
        if kind == codec.ACK:
            conn.acked(m.stream, m.value)
        elif kind == codec.BACKED:
            conn.set_backed(m.stream, bool(m.value))
        elif kind == codec.REQUEST:
            conn.request(m)
        elif kind == codec.CLOSED:
            conn.stream_closed(m.stream)
        elif kind == codec.OPENED:
            conn.machine_key, conn.capver = m.data, m.value
            if conn.closed:
                # Given up (evicted, or the server stopping) before the worker took it: the
                # ABORT may have crossed the adoption on the other socket and found no
                # connection there. The worker registers it as it sends OPENED, so this one
                # lands; else the client would live on in the worker, outside every limit.
                self.send(codec.abort(conn.id))
        elif kind == codec.BUSY:
            if conn.on_busy is not None:
                conn.on_busy(bool(m.value))
        elif kind == codec.GONE:
            self.conns.pop(m.conn, None)
            conn.lost()

    # -- writing -------------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        if self._pending:
            self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(message)
            self.messages_out += 1

    def send_parts(self, parts: list[bytes]) -> None:
        """One message given as consecutive buffers (codec.data_parts)."""
        if self._pending:
            self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(parts)
            self.messages_out += 1

    def congested(self) -> bool:
        """True while more than WRITE_HIGH bytes wait for this worker: batch nothing more."""
        return self.paused or self._pending_bytes > WRITE_HIGH

    def batch(self, frame: bytes, key: bytes) -> None:
        entry = self._pending.get(id(frame))
        if entry is None:
            if not self._pending:
                self._loop.call_soon(self.flush)
            self._pending[id(frame)] = (frame, [key])
            self._pending_bytes += len(frame)
        else:
            entry[1].append(key)
        self._pending_bytes += codec.KEY.size

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        self._pending_bytes = 0
        if self.transport is None or self.transport.is_closing():
            return
        for frame, keys in pending.values():
            # The keys of one message are bounded by MAX_MESSAGE: 8 bytes a recipient.
            step = (codec.MAX_MESSAGE - len(frame) - 16) // codec.KEY.size
            for i in range(0, len(keys), step):
                self.transport.write(codec.fanout(frame, keys[i:i + step]))
                self.messages_out += 1

    # -- connections ---------------------------------------------------------------------------

    def adopt(self, conn_id: int, sock: socket.socket, init: bytes, rest: bytes) -> bool:
        """Hand ``sock`` over; False if the worker cannot take it now (the owner serves it)."""
        if not self.alive or self.adopt_sock is None:
            return False
        try:
            message = codec.adoption(conn_id, init, rest)
            socket.send_fds(self.adopt_sock, [message], [sock.fileno()])
        except (OSError, codec.IpcError) as exc:
            log.info("connection not handed to worker %d: %s", self.index, exc)
            return False
        return True

    def heartbeat(self, now: float) -> None:
        """Send a PING, or, if the last one is unanswered past HEARTBEAT_DEADLINE, kill the
        worker (pool.died then closes its connections and starts a replacement)."""
        if self.ping_sent is None:
            self.ping_seq = (self.ping_seq % 0xFFFFFFFF) + 1
            self.ping_sent = now
            self.send(codec.ping(self.ping_seq))
        elif now - self.ping_sent > HEARTBEAT_DEADLINE:
            pid = self.proc.pid if self.proc is not None else 0
            log.error("connection worker %d (pid %d) answered no heartbeat for %.0f s: killed "
                      "and replaced; its clients reconnect", self.index, pid,
                      now - self.ping_sent)
            self.hung = True
            self.kill()

    def kill(self) -> None:
        self.alive = False
        if self.transport is not None:
            self.transport.abort()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def close_all(self) -> None:
        conns, self.conns = self.conns, {}
        for conn in conns.values():
            conn.lost()
        if self.adopt_sock is not None:
            self.adopt_sock.close()
            self.adopt_sock = None


class WorkerPool:
    """``count`` workers; connections go to the one holding the fewest."""

    def __init__(self, count: int, noise_key: X25519PrivateKey, limits: LimitsConfig,
                 handler: Handler, log_format: str = "text") -> None:
        self.count = count
        self.log_format = log_format
        self.key_bytes = noise_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
        self.limits_json = json.dumps(dataclasses.asdict(limits))
        self.handler = handler
        self.links: list[WorkerLink] = []
        self.stopping = False
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for i in range(self.count):
            link = WorkerLink(self, i)
            await link.start()
            self.links.append(link)
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = loop.time()
            for link in list(self.links):
                if link.alive:
                    link.heartbeat(now)

    def adopt(self, sock: socket.socket, init: bytes, rest: bytes,
              on_busy: Callable[[bool], None] | None,
              on_success: Callable[[], None] | None) -> RemoteConnection | None:
        live = [link for link in self.links if link.alive]
        if self.stopping or not live:
            return None
        link = min(live, key=lambda w: len(w.conns))
        self._next_id = (self._next_id % 0xFFFFFFFF) + 1
        conn = RemoteConnection(link, self._next_id, self.handler, on_busy, on_success)
        link.conns[conn.id] = conn
        if not link.adopt(conn.id, sock, init, rest):
            del link.conns[conn.id]
            return None
        return conn

    def died(self, link: WorkerLink) -> None:
        """A worker's socket closed: its connections are gone (their streams end and the
        nodes go offline as on any disconnect); a replacement starts unless we are stopping."""
        link.alive = False
        link.close_all()
        if link.proc is not None and link.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                link.proc.kill()
        if self.stopping or link not in self.links:
            return
        if not link.hung:  # a hung one was logged as it was killed
            log.error("connection worker %d exited; its clients reconnect to the others",
                      link.index)
        task = asyncio.get_running_loop().create_task(self._respawn(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn(self, old: WorkerLink) -> None:
        if old.proc is not None:
            with contextlib.suppress(Exception):
                await old.proc.wait()
        await asyncio.sleep(RESPAWN_DELAY)
        if self.stopping:
            return
        new = WorkerLink(self, old.index)
        try:
            await new.start()
        except OSError as exc:
            log.error("connection worker %d could not be restarted: %s", old.index, exc)
            return
        self.links[self.links.index(old)] = new

    async def stop(self) -> None:
        """STOP to each worker, then wait for it (killed after STOP_GRACE): no orphans."""
        self.stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in list(self._tasks):
            task.cancel()
        for link in self.links:
            link.send(codec.stop())
        for link in self.links:
            if link.proc is None:
                continue
            try:
                await asyncio.wait_for(link.proc.wait(), STOP_GRACE)
            except TimeoutError:
                link.kill()
                await link.proc.wait()
            link.alive = False
            link.close_all()
            if link.transport is not None:
                link.transport.close()

    def pids(self) -> list[int]:
        return [link.proc.pid for link in self.links if link.proc is not None]
