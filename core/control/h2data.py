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
    if conn.state_machine.state is ConnectionState.CLOSED:
        return None
    stream = conn.streams.get(stream_id)
    if stream is None or stream.state_machine.state not in _SENDABLE:
        return None
    n = len(payload)
    if n == 0 or n > min(conn.outbound_flow_control_window, stream.outbound_flow_control_window,
                         conn.max_outbound_frame_size):
        return None
    stream.outbound_flow_control_window -= n
    conn.outbound_flow_control_window -= n
    return conn.data_to_send() + data_frame(stream_id, payload)
