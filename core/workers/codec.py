"""The messages between the state owner and its connection workers (sans-IO).

Every message on the control socket is ``u32le length | u8 type | payload`` with the length
counting the type byte and the payload. Numbers are little-endian: both ends are processes on one
machine. A connection is named by the owner's 32-bit id, a stream by its HTTP/2 stream id; the
pair packed as ``<II`` (8 bytes) is a stream's *key*, the unit of a fan-out's recipient list.

The socket handed over with SCM_RIGHTS carries its own small message on a SOCK_SEQPACKET pair
(``adoption``): the connection id, the Noise initiation and the bytes read after the head.

A worker is our own process, but what arrives is still checked (sizes, types, lengths, text): a
corrupt message raises IpcError, and the receiver closes that worker rather than failing itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

MAX_MESSAGE = 8 << 20  # any one message, type byte included
DATA_CHUNK = 4 << 20  # a larger response body is sent as several DATA messages
MAX_ADOPTION = 128 << 10  # Noise initiation plus the bytes read after the request head
# A request travels whole in one REQUEST message: its body may be this big (the rest of the
# message is the head, which HTTP/2's header limits keep far smaller). configcheck.py refuses a
# limits.max_body_bytes above it when workers are on.
MAX_REQUEST_BODY = MAX_MESSAGE - (1 << 20)
KEY = struct.Struct("<II")  # (connection id, stream id): a stream's key

_LEN = struct.Struct("<I")
_U32 = struct.Struct("<I")
_CS = struct.Struct("<II")  # conn, stream
_CSV = struct.Struct("<III")  # conn, stream, value
_CSB = struct.Struct("<IIB")  # conn, stream, flag
_CB = struct.Struct("<IB")  # conn, flag
_H16 = struct.Struct("<H")
_OPENED = struct.Struct("<II32s")  # conn, capver, machine key
_SEG_INLINE = struct.Struct("<BI")  # 0, length; the bytes follow
_SEG_DEFINE = struct.Struct("<BQI")  # 1, key, length; the bytes follow
_SEG_REF = struct.Struct("<BQ")  # 2, key
INLINE, DEFINE, REF = 0, 1, 2

# owner -> worker
HELLO = 1  # the Noise private key (32 bytes), then the limits as JSON
HEADERS = 2  # conn, stream, end flag, headers
DATA = 3  # conn, stream, ack (0: none wanted), payload
END = 4  # conn, stream: END_STREAM
DONE = 5  # conn, stream: the owner's handler returned; the worker's request task may end
ABORT = 6  # conn: drop the connection now
FANOUT = 7  # u32 frame length, frame, then keys (8 bytes each) of the streams to write it to
STOP = 8  # close every connection and exit
PING = 9  # u32 sequence: the heartbeat; the worker answers PONG with the same number
DATA_CACHED = 10  # conn, stream, ack, then segments (inline, define, ref: see data_cached)
# worker -> owner
OPENED = 20  # conn, capver, machine key: the handshake is done
REQUEST = 21  # conn, stream, method, path, headers, body
ACK = 22  # conn, stream, ack: a DATA message was written and drained
BACKED = 23  # conn, stream, flag: fan-out frames for this stream wait in the worker (or not)
CLOSED = 24  # conn, stream: the stream ended on the client's side (reset, connection gone)
BUSY = 25  # conn, flag: the connection has an open request (or none)
GONE = 26  # conn: the connection is closed
PONG = 27  # u32 sequence: the answer to PING (its loop runs)

TO_WORKER = frozenset({HELLO, HEADERS, DATA, END, DONE, ABORT, FANOUT, STOP, PING,
                       DATA_CACHED})
TO_OWNER = frozenset({OPENED, REQUEST, ACK, BACKED, CLOSED, BUSY, GONE, PONG})


class IpcError(ValueError):
    """A message that is not what the other end may send: the link is closed."""


@dataclass(slots=True)
class Msg:
    kind: int
    conn: int = 0
    stream: int = 0
    value: int = 0  # ack id, flag, or capver
    data: bytes = b""  # payload, frame, body, key, machine key
    method: str = ""
    path: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    keys: bytes = b""  # FANOUT: the recipients, 8 bytes each
    segments: list[tuple[int, int, bytes]] = field(default_factory=list)  # DATA_CACHED


def _frame(kind: int, payload: bytes) -> bytes:
    if len(payload) + 1 > MAX_MESSAGE:
        raise IpcError(f"message of {len(payload) + 1} bytes exceeds {MAX_MESSAGE}")
    return _LEN.pack(len(payload) + 1) + bytes((kind,)) + payload


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise IpcError("text field over 65535 bytes")
    return _H16.pack(len(b)) + b


def _headers(headers: list[tuple[str, str]]) -> bytes:
    if len(headers) > 0xFFFF:
        raise IpcError("more than 65535 headers")
    return _H16.pack(len(headers)) + b"".join(_text(k) + _text(v) for k, v in headers)


# -- encoders ----------------------------------------------------------------------------------

def hello(key: bytes, limits_json: str) -> bytes:
    if len(key) != 32:
        raise IpcError("the Noise key is 32 bytes")
    return _frame(HELLO, key + limits_json.encode())


def headers(conn: int, stream: int, hdrs: list[tuple[str, str]], end: bool) -> bytes:
    return _frame(HEADERS, _CSB.pack(conn, stream, end) + _headers(hdrs))


def data(conn: int, stream: int, ack: int, payload: bytes | bytearray | memoryview) -> bytes:
    return _frame(DATA, _CSV.pack(conn, stream, ack) + bytes(payload))


def data_parts(conn: int, stream: int, ack: int, parts: list[bytes]) -> list[bytes]:
    """DATA whose payload is the concatenation of ``parts`` (a full map's cached chunks), as
    the buffers to write one after the other: the same bytes as ``data``, without joining."""
    size = 1 + _CSV.size + sum(map(len, parts))
    if size > MAX_MESSAGE:
        raise IpcError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    return [_LEN.pack(size) + bytes((DATA,)) + _CSV.pack(conn, stream, ack), *parts]


class Mirror(Protocol):
    """What the worker holds of the shared chunks, as the owner knows it (chunks.ChunkMirror)."""

    def fits(self, n: int) -> bool: ...
    def use(self, key: int, n: int) -> bool: ...


def data_cached(conn: int, stream: int, ack: int, parts: list[bytes],
                mirror: Mirror) -> list[bytes]:
    """DATA whose payload is the concatenation of ``parts``, a full map's, as the buffers to
    write: each shared chunk (a part with a ``key``: mapper/frames.py Shared) the worker holds
    already (``mirror`` says so) goes as its key alone, one it lacks as its key and bytes (the
    worker keeps it), any other part as its bytes."""
    size = 1 + _CSV.size + sum(len(p) + _SEG_DEFINE.size for p in parts)
    if size > MAX_MESSAGE:  # checked first: the mirror must change only if the message goes
        raise IpcError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    out = [b""]
    size = 1 + _CSV.size
    for part in parts:
        key: int | None = getattr(part, "key", None)
        if key is None or not mirror.fits(len(part)):
            out += (_SEG_INLINE.pack(INLINE, len(part)), part)
            size += _SEG_INLINE.size + len(part)
        elif mirror.use(key, len(part)):
            out.append(_SEG_REF.pack(REF, key))
            size += _SEG_REF.size
        else:
            out += (_SEG_DEFINE.pack(DEFINE, key, len(part)), part)
            size += _SEG_DEFINE.size + len(part)
    out[0] = _LEN.pack(size) + bytes((DATA_CACHED,)) + _CSV.pack(conn, stream, ack)
    return out


def end(conn: int, stream: int) -> bytes:
    return _frame(END, _CS.pack(conn, stream))


def done(conn: int, stream: int) -> bytes:
    return _frame(DONE, _CS.pack(conn, stream))


def abort(conn: int) -> bytes:
    return _frame(ABORT, _U32.pack(conn))


def fanout(frame: bytes, keys: list[bytes]) -> bytes:
    """One frame for many streams: the frame once, then each recipient's 8-byte key."""
    return _frame(FANOUT, _U32.pack(len(frame)) + frame + b"".join(keys))


def stop() -> bytes:
    return _frame(STOP, b"")


def ping(seq: int) -> bytes:
    return _frame(PING, _U32.pack(seq))


def pong(seq: int) -> bytes:
    return _frame(PONG, _U32.pack(seq))


def opened(conn: int, capver: int, machine_key: bytes) -> bytes:
    return _frame(OPENED, _OPENED.pack(conn, capver, machine_key))


def request(conn: int, stream: int, method: str, path: str,
            hdrs: list[tuple[str, str]], body: bytes) -> bytes:
    return _frame(REQUEST, _CS.pack(conn, stream) + _text(method) + _text(path)
                  + _headers(hdrs) + body)


def ack(conn: int, stream: int, ack_id: int) -> bytes:
    return _frame(ACK, _CSV.pack(conn, stream, ack_id))


def backed(conn: int, stream: int, flag: bool) -> bytes:
    return _frame(BACKED, _CSB.pack(conn, stream, flag))


def closed(conn: int, stream: int) -> bytes:
    return _frame(CLOSED, _CS.pack(conn, stream))


def busy(conn: int, flag: bool) -> bytes:
    return _frame(BUSY, _CB.pack(conn, flag))


def gone(conn: int) -> bytes:
    return _frame(GONE, _U32.pack(conn))


def adoption(conn: int, init: bytes, rest: bytes) -> bytes:
    """The message that travels with a handed-over socket."""
    out = _CSV.pack(conn, len(init), len(rest)) + init + rest
    if len(out) > MAX_ADOPTION:
        raise IpcError(f"adoption of {len(out)} bytes exceeds {MAX_ADOPTION}")
    return out


def parse_adoption(raw: bytes) -> tuple[int, bytes, bytes]:
    if len(raw) < _CSV.size or len(raw) > MAX_ADOPTION:
        raise IpcError(f"adoption of {len(raw)} bytes")
    conn, n_init, n_rest = _CSV.unpack_from(raw)
    if _CSV.size + n_init + n_rest != len(raw):
        raise IpcError("adoption lengths do not add up")
    init = raw[_CSV.size:_CSV.size + n_init]
    return conn, init, raw[_CSV.size + n_init:]


# -- decoding ----------------------------------------------------------------------------------

class _Reader:
    """Fields of one message, read from ``pos`` on (no copy of the message to skip its type)."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise IpcError("message shorter than its fields")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        if self.pos + st.size > len(self.buf):
            raise IpcError("message shorter than its fields")
        out = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return out

    def text(self) -> str:
        (n,) = self.unpack(_H16)
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise IpcError("text field is not UTF-8") from None

    def headers(self) -> list[tuple[str, str]]:
        (n,) = self.unpack(_H16)
        return [(self.text(), self.text()) for _ in range(n)]

    def rest(self) -> bytes:
        out = self.buf[self.pos:]
        self.pos = len(self.buf)
        return out

    def finish(self) -> None:
        if self.pos != len(self.buf):
            raise IpcError("message longer than its fields")


def _segments(r: _Reader) -> list[tuple[int, int, bytes]]:
    out = []
    buf = r.buf
    while r.pos < len(buf):
        kind = buf[r.pos]
        if kind == INLINE:
            _, n = r.unpack(_SEG_INLINE)
            out.append((INLINE, 0, r.take(n)))
        elif kind == DEFINE:
            _, key, n = r.unpack(_SEG_DEFINE)
            out.append((DEFINE, key, r.take(n)))
        elif kind == REF:
            _, key = r.unpack(_SEG_REF)
            out.append((REF, key, b""))
        else:
            raise IpcError(f"unknown segment type {kind}")
    return out


def parse(body: bytes) -> Msg:
    """One message (type byte and payload, the length prefix removed)."""
    if not body:
        raise IpcError("empty message")
    kind = body[0]
    r = _Reader(body, 1)
    m = Msg(kind)
    if kind == HELLO:
        m.data = r.take(32)
        try:
            m.path = r.rest().decode("utf-8")  # the limits, JSON
        except UnicodeDecodeError:
            raise IpcError("limits are not UTF-8") from None
    elif kind == HEADERS:
        m.conn, m.stream, flag = r.unpack(_CSB)
        m.value = flag
        m.headers = r.headers()
    elif kind == DATA:
        m.conn, m.stream, m.value = r.unpack(_CSV)
        m.data = r.rest()
    elif kind in (END, DONE, CLOSED):
        m.conn, m.stream = r.unpack(_CS)
    elif kind in (ABORT, GONE):
        (m.conn,) = r.unpack(_U32)
    elif kind in (PING, PONG):
        (m.value,) = r.unpack(_U32)
    elif kind == DATA_CACHED:
        m.conn, m.stream, m.value = r.unpack(_CSV)
        m.segments = _segments(r)
    elif kind == FANOUT:
        (n,) = r.unpack(_U32)
        m.data = r.take(n)
        m.keys = r.rest()
        if len(m.keys) % KEY.size:
            raise IpcError("fan-out keys are not 8 bytes each")
    elif kind == STOP:
        pass
    elif kind == OPENED:
        m.conn, m.value, m.data = _OPENED.unpack(r.take(_OPENED.size))
    elif kind == REQUEST:
        m.conn, m.stream = r.unpack(_CS)
        m.method, m.path = r.text(), r.text()
        m.headers = r.headers()
        m.data = r.rest()
    elif kind == ACK:
        m.conn, m.stream, m.value = r.unpack(_CSV)
    elif kind == BACKED:
        m.conn, m.stream, m.value = r.unpack(_CSB)
    elif kind == BUSY:
        m.conn, m.value = r.unpack(_CB)
    else:
        raise IpcError(f"unknown message type {kind}")
    r.finish()
    return m


class Decoder:
    """Bytes in, messages out; only the kinds ``accept`` names (one direction's)."""

    def __init__(self, accept: frozenset[int]) -> None:
        self._accept = accept
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Msg]:
        self._buf += data
        buf = self._buf
        out: list[Msg] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n == 0 or n > MAX_MESSAGE:
                raise IpcError(f"message length {n} outside 1..{MAX_MESSAGE}")
            if len(buf) - pos - 4 < n:
                break
            with memoryview(buf) as view:  # one copy of the message, not two
                body = bytes(view[pos + 4:pos + 4 + n])
            if body[0] not in self._accept:
                raise IpcError(f"message type {body[0]} not expected here")
            out.append(parse(body))
            pos += 4 + n
        del buf[:pos]
        return out
