"""One HTTP/2 DATA frame built without h2's per-frame machinery, with h2's books kept (sans-IO).

A fan-out writes one small DATA frame (a delta of about 70 bytes) to each of thousands of
streams. Through ``H2Connection.send_data`` each cost about 10 us of state machines, frame
objects and serialisation, the largest single share of a fan-out's CPU above the floor (sealing
and writing, ``meshscale bench floor``); this costs under 1 us. It changes exactly what h2's
own ``send_data`` would (the connection's and the stream's outbound flow-control windows), so h2
goes on to frame and flow-control everything else itself. tests/unit/test_h2data.py checks it
against h2's own ``send_data``, byte for byte and window for window, so an h2 release that
keeps these books elsewhere fails there, not in production.
"""

from __future__ import annotations

import struct
from collections import deque

import h2.connection
from h2.connection import ConnectionState
from h2.stream import StreamState

_HEAD = struct.Struct(">BHBBI")  # 24-bit length, type 0 (DATA), no flags, stream ID
_SENDABLE = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


def data_frame(stream_id: int, payload: bytes | memoryview) -> bytes:
    """A DATA frame without flags or padding (RFC 9113 §6.1)."""
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, 0, 0, stream_id & 0x7FFFFFFF) + payload


def lean_data(conn: h2.connection.H2Connection, stream_id: int,
              payload: bytes | memoryview) -> bytes | None:
    """The bytes to write for ``payload`` as one DATA frame on ``stream_id`` (after whatever h2
    had queued), with both windows debited; None, and nothing changed, if h2 would not send it
    as one frame now (stream not open for sending, a window or the frame size too small)."""
    try:
        stream = LeanStream(conn, stream_id)
    except KeyError:
        return None
    return stream.data(payload)


class LeanStream:
    """``lean_data`` for one stream, with the stream's h2 objects looked up once.

    A map stream takes thousands of deltas over its life; looking up the h2 stream, its state
    machine and the frame header's stream ID per delta was a quarter of the per-recipient cost
    above the floor. The h2 stream object lives as long as the stream (h2 keeps its state in
    it: once closed or reset it stays CLOSED), so holding it is safe; the books kept are the
    same as ``lean_data``'s, and the same tests hold it to h2's own ``send_data``."""

    __slots__ = ("_conn", "_machine", "_sid", "_stream")

    def __init__(self, conn: h2.connection.H2Connection, stream_id: int) -> None:
        self._conn = conn
        self._stream = conn.streams[stream_id]  # KeyError: not an open stream
        self._machine = self._stream.state_machine
        self._sid = (stream_id & 0x7FFFFFFF).to_bytes(4, "big")

    def data(self, payload: bytes | memoryview) -> bytes | None:
        """As ``lean_data(conn, stream_id, payload)``."""
        conn = self._conn
        stream = self._stream
        n = len(payload)
        if (n == 0 or self._machine.state not in _SENDABLE
                or n > stream.outbound_flow_control_window
                or n > conn.outbound_flow_control_window
                or n > conn.max_outbound_frame_size
                or conn.state_machine.state is ConnectionState.CLOSED):
            return None
        stream.outbound_flow_control_window -= n
        conn.outbound_flow_control_window -= n
        # Type 0 (DATA) and no flags: the two zero bytes after the 24-bit length.
        return b"".join((conn.data_to_send(), n.to_bytes(3, "big"), b"\x00\x00", self._sid,
                         payload))


def lean_frames(conn: h2.connection.H2Connection, stream_id: int, parts: deque[memoryview],
                limit: int, out: bytearray) -> tuple[bytearray, int]:
    """DATA frames of the next bytes of ``parts`` (taken from its left), written into ``out``
    after whatever h2 had queued: as many as the windows allow, up to ``limit`` bytes of data,
    frames of at most the peer's frame size, both windows debited. Returns the length written
    into ``out`` and ``out`` (a new buffer if it was too small; 0: nothing was written and
    nothing changed, then h2's own ``send_data`` decides).

    A full map (hundreds of KB, cached zstd chunks) goes from its parts straight into one
    buffer of frames (``out``, reused by the caller) with one copy, instead of being joined
    into one bytes object, cut into frames and joined again (issue 19)."""
    if conn.state_machine.state is ConnectionState.CLOSED:
        return out, 0
    stream = conn.streams.get(stream_id)
    if stream is None or stream.state_machine.state not in _SENDABLE:
        return out, 0
    size = conn.max_outbound_frame_size
    room = min(stream.outbound_flow_control_window, conn.outbound_flow_control_window, limit,
               sum(len(p) for p in parts))
    if room <= 0:
        return out, 0
    pending = conn.data_to_send()
    need = len(pending) + room + _HEAD.size * -(-room // size)
    if need > len(out):
        out = bytearray(need)
    out[: len(pending)] = pending
    pos = len(pending)
    stream.outbound_flow_control_window -= room
    conn.outbound_flow_control_window -= room
    left = room
    while left:
        n = min(size, left)
        _HEAD.pack_into(out, pos, n >> 16, n & 0xFFFF, 0, 0, stream_id & 0x7FFFFFFF)
        pos += _HEAD.size
        left -= n
        while n:
            part = parts[0]
            take = len(part)
            if take > n:
                take = n
                parts[0] = part[n:]
            else:
                parts.popleft()
            out[pos : pos + take] = part[:take]
            pos += take
            n -= take
    return out, pos
