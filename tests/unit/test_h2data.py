"""lean_data against h2's own send_data: the same bytes, the same windows, the same refusals."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from meshscale.control.h2data import LeanStream, data_frame, lean_data, lean_frames

REQUEST = [(":method", "POST"), (":path", "/machine/map"), (":scheme", "http"),
           (":authority", "x")]


def pair(window: int = 4 << 20) -> tuple[h2.connection.H2Connection,
                                         h2.connection.H2Connection, int]:
    """A server with one open response stream (the client half-closed it), as a map stream."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.increment_flow_control_window(1 << 30)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(":status", "200")])
    client.receive_data(server.data_to_send())
    return server, client, sid


def test_data_frame_bytes() -> None:
    assert data_frame(1, b"abc") == b"\x00\x00\x03\x00\x00\x00\x00\x00\x01abc"
    assert data_frame(0x7FFFFFFF, bytes(70000))[:9] == b"\x01\x11\x70\x00\x00\x7f\xff\xff\xff"


Lean = Callable[[h2.connection.H2Connection, int], Callable[[bytes], bytes | None]]


def by_function(conn: h2.connection.H2Connection, sid: int) -> Callable[[bytes], bytes | None]:
    return lambda payload: lean_data(conn, sid, payload)


def by_stream(conn: h2.connection.H2Connection, sid: int) -> Callable[[bytes], bytes | None]:
    return LeanStream(conn, sid).data


BOTH = pytest.mark.parametrize("make", [by_function, by_stream], ids=["lean_data", "LeanStream"])


@BOTH
@pytest.mark.parametrize("sizes", [[1], [70, 81, 200], [16384], [5000] * 20])
def test_same_bytes_and_windows_as_h2(sizes: list[int], make: Lean) -> None:
    lean, client, sid = pair()
    ref, _, _ = pair()
    send = make(lean, sid)
    for n in sizes:
        payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
        wire = send(payload)
        ref.send_data(sid, payload)
        assert wire == ref.data_to_send()
        assert lean.local_flow_control_window(sid) == ref.local_flow_control_window(sid)
        assert lean.outbound_flow_control_window == ref.outbound_flow_control_window
        # The client reads it as h2 data on the stream.
        events = client.receive_data(wire)
        assert [(type(e), e.stream_id, e.data) for e in events] == [
            (h2.events.DataReceived, sid, payload)]
    # h2 goes on from the same books: its own frames after ours are accepted.
    lean.send_data(sid, b"tail", end_stream=True)
    assert any(isinstance(e, h2.events.StreamEnded)
               for e in client.receive_data(lean.data_to_send()))


@BOTH
def test_pending_h2_bytes_go_first(make: Lean) -> None:
    lean, client, sid = pair()
    send = make(lean, sid)
    lean.ping(b"12345678")  # queued by h2, not yet taken
    wire = send(b"delta")
    assert wire is not None
    kinds = [type(e) for e in client.receive_data(wire)]
    assert kinds == [h2.events.PingReceived, h2.events.DataReceived]


@BOTH
def test_refusals_change_nothing(make: Lean) -> None:
    server, client, sid = pair(window=100)
    send = make(server, sid)
    before = server.local_flow_control_window(sid)
    conn_before = server.outbound_flow_control_window
    assert send(bytes(101)) is None  # the stream's window
    assert send(b"") is None
    big, _, bsid = pair()
    assert make(big, bsid)(bytes(big.max_outbound_frame_size + 1)) is None
    assert server.local_flow_control_window(sid) == before
    assert server.outbound_flow_control_window == conn_before
    # A stream the client reset is not open for sending.
    client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    server.receive_data(client.data_to_send())
    assert send(b"x") is None
    # Nor is anything after the connection closed.
    other, _, osid = pair()
    other_send = make(other, osid)
    other.close_connection()
    assert other_send(b"x") is None


def test_no_such_stream() -> None:
    server, _, sid = pair()
    assert lean_data(server, sid + 2, b"x") is None
    with pytest.raises(KeyError):
        LeanStream(server, sid + 2)


def split(data: bytes, cuts: list[int]) -> deque[memoryview]:
    edges = [0, *cuts, len(data)]
    return deque(memoryview(data[a:b]) for a, b in itertools.pairwise(edges))


@pytest.mark.parametrize(("size", "cuts", "window", "limit"), [
    (70, [], 4 << 20, 1 << 20),  # one small frame
    (50_000, [0, 3, 16384, 16390, 40_000], 4 << 20, 1 << 20),  # parts across frame edges
    (100_000, [7_700 * i for i in range(1, 13)], 30_000, 1 << 20),  # the window stops it
    (100_000, [50_000], 4 << 20, 20_000),  # the limit stops it
])
def test_frames_from_parts_as_h2_sends_them(size: int, cuts: list[int], window: int,
                                            limit: int) -> None:
    lean, client, sid = pair(window)
    ref, _, _ = pair(window)
    data = bytes(i % 253 for i in range(size))
    parts = split(data, cuts)
    lean.ping(b"12345678")  # queued by h2: it goes first
    ref.ping(b"12345678")
    out = bytearray(2 << 20)
    buf, n = lean_frames(lean, sid, parts, limit, out)
    assert buf is out
    room = min(window, limit, size)
    frame = ref.max_outbound_frame_size
    for start in range(0, room, frame):
        ref.send_data(sid, data[start : min(start + frame, room)])
    assert bytes(out[:n]) == ref.data_to_send()
    assert lean.local_flow_control_window(sid) == ref.local_flow_control_window(sid)
    assert lean.outbound_flow_control_window == ref.outbound_flow_control_window
    # What was taken left the parts; the rest is still there, in order.
    assert b"".join(parts) == data[room:]
    events = client.receive_data(bytes(out[:n]))
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == (
        data[:room])


def test_frames_from_parts_refusals_and_a_small_buffer() -> None:
    server, client, sid = pair(window=100)
    data = bytes(300)
    parts = split(data, [150])
    out = bytearray(1000)
    buf, n = lean_frames(server, sid, parts, 1 << 20, out)
    assert n == 100 + 9 and buf is out
    assert lean_frames(server, sid, parts, 1 << 20, out) == (out, 0)  # window used up
    assert sum(map(len, parts)) == 200
    big, _, bsid = pair()
    buf, n = lean_frames(big, bsid, split(bytes(5000), []), 1 << 20, bytearray(10))
    assert n == 5009 and len(buf) >= n  # a bigger buffer than the one given
    client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    server.receive_data(client.data_to_send())
    assert lean_frames(server, sid, parts, 1 << 20, out)[1] == 0
    assert sum(map(len, parts)) == 200  # nothing taken
