"""A simulated Tailscale node that speaks the real protocol: /key, Noise IK, HTTP/2, zstd maps.

For tests and the load generator (``meshscale bench``); it targets loopback servers. It is not a
Tailscale client: no WireGuard, no DERP, only the control protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import zstandard
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.control.framing import RAW, Framing
from meshscale.errors import ProtocolError
from meshscale.noise.handshake import public_bytes
from meshscale.noise.records import RecordDecoder, RecordEncoder
from meshscale.simhandshake import (
    CAPVER,
    fetch_server_key,
    finish_handshake,
    make_initiation,
    upgrade_request,
)
from meshscale.websocket import ClientUpgrade

STREAM_WINDOW = 4 << 20  # x/net/http2 transportDefaultStreamFlow


def decompress_all(dctx: zstandard.ZstdDecompressor, data: bytes) -> bytes:
    """One map message may be several concatenated zstd frames; decode them all."""
    out = []
    while data:
        obj = dctx.decompressobj()
        out.append(obj.decompress(data))
        data = obj.unused_data
    return b"".join(out)


@dataclass
class Reply:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    # When set, data is handed over in the reader's own turn (no queue, no task switch):
    # the load generator receives thousands of small deltas per event.
    on_data: Callable[[bytes | None], None] | None = None

    def feed(self, data: bytes | None) -> None:
        if self.on_data is not None:
            self.on_data(data)
        else:
            self.chunks.put_nowait(data)


class ControlConnection:
    """One Noise + HTTP/2 connection to a control server; with ``websocket``, carried in
    WebSocket messages as Tailscale's JS/WASM client does (protocol.md §3.9)."""

    def __init__(self, machine: X25519PrivateKey | None = None, version: int = CAPVER,
                 websocket: bool = False) -> None:
        self.machine = machine or X25519PrivateKey.generate()
        self.version = version
        self.websocket = websocket
        self.framing: Framing = RAW
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.replies: dict[int, Reply] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.window = asyncio.Event()

    async def connect(self, host: str, port: int, server_pub: bytes | None = None) -> None:
        server_pub = server_pub or await fetch_server_key(host, port)
        init, ss, e = make_initiation(self.machine, server_pub, self.version)
        self.reader, self.writer = await asyncio.open_connection(host, port, limit=2**22)
        if self.websocket:
            response, extra = await self._websocket_upgrade(host, port, init)
        else:
            self.writer.write(upgrade_request(host, port, init))
            head = await self.reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"upgrade refused: {head[:80]!r}")
            response, extra = await self.reader.readexactly(51), b""
        self._start(finish_handshake(ss, e, self.machine, response))
        self._extra = extra  # records that came with the handshake response
        self._reader_task = asyncio.create_task(self._read_loop())

    def _start(self, keys: tuple[bytes, bytes]) -> None:
        """The Noise session's codecs and HTTP/2's preface and settings, once the handshake
        gave the (send, receive) keys."""
        self.encoder = RecordEncoder(keys[0])
        self.decoder = RecordDecoder(keys[1])
        self.h2.initiate_connection()
        # Windows as tailscale's Go client (x/net/http2's Transport) grants them: 4 MiB per
        # stream, 1 GiB for the connection; a full map at thousands of peers then flows without
        # waiting for WINDOW_UPDATEs, as it does to real clients.
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        self.h2.increment_flow_control_window(2**30)
        self._flush()

    async def _websocket_upgrade(self, host: str, port: int, init: bytes) -> tuple[bytes, bytes]:
        """GET /ts2021 with Upgrade: websocket; (handshake response, stream bytes after it)."""
        upgrade = ClientUpgrade(f"{host}:{port}", init)
        self.writer.write(upgrade.request)
        framing = None
        while framing is None:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed during the WebSocket upgrade")
            framing = upgrade.receive(data)
        self.framing = framing
        stream = bytearray(self.framing.unwrap(b""))  # what came with the 101
        while len(stream) < 51:
            more = await self._read()
            if more is None:
                raise ConnectionError("connection closed during the Noise handshake")
            stream += more
        return bytes(stream[:51]), bytes(stream[51:])

    async def _read(self) -> bytes | None:
        """The next bytes of the record stream (maybe none yet); None at its end."""
        data = await self.reader.read(65536)
        if not data:
            return None
        records = self.framing.unwrap(data)
        self.writer.write(self.framing.replies())  # pongs (WebSocket); b"" writes nothing
        return records

    @property
    def machine_public(self) -> bytes:
        return public_bytes(self.machine)

    def send_records(self, records: bytes | bytearray) -> None:
        """Noise records on the wire, framed as this connection frames them."""
        self.writer.write(self.framing.wrap(records))

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.send_records(self.encoder.encode(data))

    async def _read_loop(self) -> None:
        try:
            data: bytes | None = self._extra
            while data is not None:
                plain = self.decoder.feed(data)
                if plain:
                    for ev in self.h2.receive_data(plain):
                        self._event(ev)
                    self._flush()
                data = await self._read()
        except (ConnectionError, OSError, ProtocolError, h2.exceptions.ProtocolError):
            pass  # the server closed or broke the connection: this simulated node is done
        finally:
            self.closed.set()
            for r in self.replies.values():
                r.done.set()
                r.feed(None)

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            r = self.replies.get(ev.stream_id)
            if r is not None:
                headers = {str(k): str(v) for k, v in ev.headers or []}
                r.status = int(headers[":status"])
        elif isinstance(ev, h2.events.DataReceived):
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            r = self.replies.get(ev.stream_id)
            if r is not None and ev.data:
                if r.on_data is None:
                    r.body += ev.data
                r.feed(ev.data)
            if ev.stream_ended and r is not None:
                r.done.set()
                r.feed(None)
        elif isinstance(ev, h2.events.WindowUpdated):
            self.window.set()
        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
            self.window.set()  # a sender waiting for credit on this stream must look again
            r = self.replies.get(ev.stream_id)
            if r is not None:
                r.done.set()
                r.feed(None)

    def start_request(self, path: str, body: bytes, method: str = "POST") -> int:
        """Send a request whose body fits the flow-control window at once (map requests)."""
        sid = self._headers(path, method)
        self.h2.send_data(sid, body, end_stream=True)
        self._flush()
        return sid

    def _headers(self, path: str, method: str, end: bool = False) -> int:
        sid: int = self.h2.get_next_available_stream_id()
        self.replies[sid] = Reply()
        self.h2.send_headers(sid, [(":method", method), (":scheme", "https"),
                                   (":authority", "unused"), (":path", path)], end_stream=end)
        if end:
            self._flush()
        return sid

    async def _send_body(self, sid: int, body: bytes) -> None:
        view = memoryview(body)
        reply = self.replies[sid]
        while True:
            if reply.done.is_set():
                return  # the server answered (413, 408) or reset the stream: stop sending
            size = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size,
                       len(view))
            if size <= 0 and view:
                self.window.clear()
                await asyncio.wait_for(self.window.wait(), 10)
                continue
            try:
                self.h2.send_data(sid, bytes(view[:size]), end_stream=size == len(view))
            except h2.exceptions.StreamClosedError:
                return  # reset by the server while we were sending; the reply says why
            self._flush()
            view = view[size:]
            if not view:
                return

    async def request(self, path: str, obj: Any, timeout: float = 10.0,
                      method: str = "POST") -> tuple[int, bytes]:
        """``obj`` as the JSON body (bytes as they are); None: no body (a GET of
        ``/machine/ssh/action``, as tailscaled's fetchSSHAction sends it)."""
        sid = self._headers(path, method, end=obj is None)
        if obj is not None:
            await self._send_body(sid, obj if isinstance(obj, bytes) else json.dumps(obj).encode())
        reply = self.replies[sid]
        await asyncio.wait_for(reply.done.wait(), timeout)
        del self.replies[sid]
        return reply.status, bytes(reply.body)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        with contextlib.suppress(Exception):
            self.writer.close()


class MapStream:
    """Decodes the framed (u32 LE length + zstd) MapResponses of one streaming request."""

    def __init__(self, conn: ControlConnection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.buf = bytearray()
        self.dctx = zstandard.ZstdDecompressor()
        self.bytes_received = 0

    async def next(self, timeout: float = 10.0) -> dict[str, Any] | None:
        reply = self.conn.replies[self.sid]
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack_from("<I", self.buf)
                if len(self.buf) >= 4 + n:
                    frame = bytes(self.buf[4:4 + n])
                    del self.buf[:4 + n]
                    msg: dict[str, Any] = json.loads(decompress_all(self.dctx, frame))
                    return msg
            chunk = await asyncio.wait_for(reply.chunks.get(), timeout)
            if chunk is None:
                return None
            self.bytes_received += len(chunk)
            self.buf += chunk

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            msg = await self.next(timeout=3600)
            if msg is None:
                return
            yield msg


class SimNode:
    """A node: keys, registration and map requests over one ControlConnection."""

    def __init__(self, hostname: str, conn: ControlConnection | None = None) -> None:
        self.hostname = hostname
        self.conn = conn or ControlConnection()
        self.node_key = X25519PrivateKey.generate()
        self.disco_key = X25519PrivateKey.generate()
        # What a real client reports; kept identical across requests, as real clients do.
        self.hostinfo: dict[str, Any] = {"Hostname": hostname, "OS": "linux", "GoArch": "amd64"}

    @property
    def node_key_text(self) -> str:
        return "nodekey:" + public_bytes(self.node_key).hex()

    @property
    def disco_key_text(self) -> str:
        return "discokey:" + public_bytes(self.disco_key).hex()

    def register_body(self, auth_key: str | None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Version": self.conn.version,
            "NodeKey": self.node_key_text,
            "OldNodeKey": "nodekey:" + "0" * 64,
            "Expiry": "0001-01-01T00:00:00Z",
            "Followup": "",
            "Hostinfo": dict(self.hostinfo),
        }
        if auth_key is not None:
            body["Auth"] = {"AuthKey": auth_key}
        body.update(extra)
        return body

    async def register(self, auth_key: str | None, **extra: Any) -> dict[str, Any]:
        status, body = await self.conn.request("/machine/register",
                                               self.register_body(auth_key, **extra))
        if status != 200:
            raise ConnectionError(f"register: HTTP {status}: {body!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def map_body(self, stream: bool, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Version": self.conn.version,
            "Compress": "zstd",
            "KeepAlive": True,
            "NodeKey": self.node_key_text,
            "DiscoKey": self.disco_key_text,
            "Stream": stream,
            "Hostinfo": dict(self.hostinfo),
        }
        if not stream:
            body["OmitPeers"] = True
        body.update(extra)
        return body

    def open_stream(self, **extra: Any) -> MapStream:
        sid = self.conn.start_request("/machine/map",
                                      json.dumps(self.map_body(True, **extra)).encode())
        return MapStream(self.conn, sid)

    async def lite_update(self, endpoints: list[str], derp: int = 0) -> int:
        extra: dict[str, Any] = {"Endpoints": endpoints, "EndpointTypes": [2] * len(endpoints)}
        if derp:
            extra["Hostinfo"] = {**self.hostinfo, "NetInfo": {"PreferredDERP": derp}}
        status, _ = await self.conn.request("/machine/map", self.map_body(False, **extra))
        return status
