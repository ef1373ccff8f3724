"""The load generator's lean HTTP/2 receive path (meshscale.bench.h2lean), byte for byte.

Frames are written here from RFC 9113 section 4.1 (and, in the last tests, by h2 as a server
would send them); the parser must hand a claimed stream's DATA payloads to its reader and every
other byte, unchanged and in order, to h2, however the stream is cut into reads.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from meshscale.bench.h2lean import LeanFrames, window_update
from meshscale.errors import ProtocolError

SID = 1


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")
    return head + payload


def data(payload: bytes, sid: int = SID, end: bool = False, pad: int | None = None) -> bytes:
    flags = 0x1 if end else 0
    if pad is not None:
        return frame(0x0, flags | 0x8, sid, bytes((pad,)) + payload + b"\0" * pad)
    return frame(0x0, flags, sid, payload)


SETTINGS = frame(0x4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
PING = frame(0x6, 0, 0, b"12345678")
HEADERS = frame(0x1, 0x4, SID, b"\x88")  # END_HEADERS; ":status: 200" (HPACK index 8)
RST = frame(0x3, 0, SID, b"\x00\x00\x00\x08")


class Recorder:
    def __init__(self, window: int = 1 << 20, **kw: int) -> None:
        self.events: list[tuple[str, int, bytes]] = []
        self.lean = LeanFrames(window, self.on_frames, **kw)

    def claim(self, sid: int = SID) -> None:
        self.lean.claim(sid, lambda payload: self.events.append(("data", sid, payload)))

    def on_frames(self, raw: bytes) -> None:
        self.events.append(("h2", 0, raw))

    def merged(self) -> list[tuple[str, int, bytes]]:
        """Consecutive events of one kind and stream joined: reads may cut anywhere."""
        out: list[tuple[str, int, bytes]] = []
        for kind, sid, b in self.events:
            if out and out[-1][:2] == (kind, sid):
                out[-1] = (kind, sid, out[-1][2] + b)
            else:
                out.append((kind, sid, b))
        return out


def run(wire: bytes, cuts: list[int], claim: bool = True) -> Recorder:
    rec = Recorder()
    if claim:
        rec.claim()
    last = 0
    for cut in [*cuts, len(wire)]:
        rec.lean.feed(wire[last:cut])
        last = cut
    return rec


STREAM = (SETTINGS + HEADERS + data(b"abc") + PING + data(b"hello", pad=3)
          + data(b"other", sid=3) + data(b"") + data(b"fin", end=True) + data(b"late"))
def expected() -> list[tuple[str, int, bytes]]:
    return [
        ("h2", 0, SETTINGS + HEADERS),
        ("data", SID, b"abc"),
        ("h2", 0, PING),
        ("data", SID, b"hello"),
        # Another stream's DATA, the frame that ends the claimed stream and what follows
        # its end all go to h2 (which closes the stream and rejects DATA after it); the empty
        # DATA frame between them is ours and carries nothing.
        ("h2", 0, data(b"other", sid=3) + data(b"fin", end=True) + data(b"late")),
    ]


def test_frames_routed_in_order() -> None:
    rec = run(STREAM, [])
    # The empty DATA frame is ours too (flow control), but carries nothing to hand over.
    assert rec.events[:4] == expected()[:4]
    assert rec.merged() == expected()


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_cut(cut: int) -> None:
    assert run(STREAM, [cut]).merged() == expected()


def test_byte_by_byte() -> None:
    assert run(STREAM, list(range(1, len(STREAM)))).merged() == expected()


def test_unclaimed_stream_is_all_h2() -> None:
    assert run(STREAM, [7, 30], claim=False).merged() == [("h2", 0, STREAM)]


def test_data_before_headers_goes_to_h2_and_releases() -> None:
    wire = data(b"early") + HEADERS + data(b"x")
    assert run(wire, []).merged() == [("h2", 0, wire)]


def test_reset_stream_releases() -> None:
    wire = HEADERS + data(b"a") + RST + data(b"b")
    assert run(wire, []).merged() == [("h2", 0, HEADERS), ("data", SID, b"a"),
                                      ("h2", 0, RST + data(b"b"))]


def test_headers_with_end_stream_release() -> None:
    wire = frame(0x1, 0x5, SID, b"\x88") + data(b"b")
    assert run(wire, []).merged() == [("h2", 0, wire)]


def test_trailers_end_the_stream() -> None:
    trailers = frame(0x1, 0x5, SID, b"\x40\x01a\x01b")
    wire = HEADERS + data(b"a") + trailers + data(b"b")
    assert run(wire, []).merged() == [("h2", 0, HEADERS), ("data", SID, b"a"),
                                      ("h2", 0, trailers + data(b"b"))]


def test_continuation_keeps_the_header_block_together() -> None:
    # HEADERS without END_HEADERS: every frame until END_HEADERS goes to h2, even a DATA frame
    # of the claimed stream (a protocol error h2 reports), so HPACK sees the whole block.
    start = frame(0x1, 0x0, SID, b"\x88")
    cont = frame(0x9, 0x4, SID, b"")
    wire = start + data(b"bad") + cont + data(b"ok")
    for cut in range(len(wire) + 1):
        assert run(wire, [cut]).merged() == [("h2", 0, start + data(b"bad") + cont),
                                             ("data", SID, b"ok")]
    # And with the CONTINUATION first, the stream opens when the block ends.
    wire = start + cont + data(b"ok")
    assert run(wire, []).merged() == [("h2", 0, start + cont), ("data", SID, b"ok")]


def test_push_promise_header_block_goes_to_h2() -> None:
    promise = frame(0x5, 0x0, SID, b"\x00\x00\x00\x02\x82")
    cont = frame(0x9, 0x4, SID, b"")
    wire = HEADERS + promise + data(b"x") + cont + data(b"y")
    assert run(wire, []).merged() == [("h2", 0, HEADERS + promise + data(b"x") + cont),
                                      ("data", SID, b"y")]


def test_window_updates_byte_for_byte() -> None:
    rec = Recorder(window=64)
    rec.claim()
    rec.lean.feed(HEADERS + data(b"a" * 10) + data(b"b" * 10) + data(b"c" * 5, pad=4))
    # 10 + 10 + (1 + 5 + 4) = 30 consumed: below half of 64, nothing owed yet.
    assert rec.lean.data_to_send() == b""
    rec.lean.feed(data(b"d" * 2))
    owed = rec.lean.data_to_send()
    # 32 reached: one update for the stream and one for the connection, 32 each.
    assert owed == (bytes.fromhex("000004080000000001") + (32).to_bytes(4, "big")
                    + bytes.fromhex("000004080000000000") + (32).to_bytes(4, "big"))
    assert owed == window_update(SID, 32) + window_update(0, 32)
    assert rec.lean.data_to_send() == b""
    # The server's window is 64 - 32 + 32 = 64 again: 64 bytes fit, 65 do not.
    rec.lean.feed(data(b"e" * 31))
    assert rec.lean.data_to_send() == b""
    with pytest.raises(ProtocolError, match="FLOW_CONTROL_ERROR"):
        rec.lean.feed(data(b"f" * 34))


def test_padding_longer_than_frame_is_an_error() -> None:
    rec = Recorder()
    rec.claim()
    bad = frame(0x0, 0x8, SID, bytes((5,)) + b"abcd")  # pad length 5 in a 5-byte payload
    with pytest.raises(ProtocolError, match="padding"):
        rec.lean.feed(HEADERS + bad)
    rec = Recorder()
    rec.claim()
    with pytest.raises(ProtocolError, match="padding"):
        rec.lean.feed(HEADERS + frame(0x0, 0x8, SID, b""))


def test_padding_only_frame() -> None:
    rec = run(HEADERS + frame(0x0, 0x8, SID, bytes((4,)) + b"\0" * 4) + data(b"z"), [])
    assert rec.merged() == [("h2", 0, HEADERS), ("data", SID, b"z")]


def test_frame_larger_than_max_is_an_error() -> None:
    rec = Recorder(max_frame_size=16384)
    with pytest.raises(ProtocolError, match="FRAME_SIZE_ERROR"):
        rec.lean.feed(frame(0x0, 0, 3, b"\0" * 16385)[:9])


def test_release_hands_the_stream_back() -> None:
    rec = Recorder()
    rec.claim()
    rec.lean.feed(HEADERS + data(b"a"))
    rec.lean.release(SID)
    rec.lean.feed(data(b"b"))
    assert rec.merged() == [("h2", 0, HEADERS), ("data", SID, b"a"), ("h2", 0, data(b"b"))]


# -- against h2 as the server, and h2 as the rest of the client --------------------------------


def pair(window: int) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection,
                                list[bytes], LeanFrames]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.increment_flow_control_window(2**30)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    got: list[bytes] = []

    def to_h2(raw: bytes) -> None:
        client.receive_data(raw)

    lean = LeanFrames(window, to_h2)
    lean.feed(server.data_to_send())
    server.receive_data(client.data_to_send())  # settings ACK
    return client, server, got, lean


def test_against_h2_server_flow_control_and_pings() -> None:
    window = 1 << 16
    client, server, got, lean = pair(window)
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "POST"), (":scheme", "https"),
                              (":authority", "x"), (":path", "/machine/map")], end_stream=True)
    lean.claim(sid, got.append)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(":status", "200")])
    lean.feed(server.data_to_send())
    sent = bytearray()
    acks: list[bytes] = []
    for i in range(40):
        chunk = bytes([i]) * (1000 + i)
        server.send_data(sid, chunk, pad_length=i % 3 if i % 2 else None)
        sent += chunk
        if i == 17:
            server.ping(b"pingpong")
        wire = server.data_to_send()
        for cut in range(0, len(wire), 777):  # reads cut anywhere
            lean.feed(wire[cut:cut + 777])
        for ev in server.receive_data(client.data_to_send() + lean.data_to_send()):
            if isinstance(ev, h2.events.PingAckReceived):
                acks.append(ev.ping_data)
        # The server's view of both windows equals ours: what it may still send.
        assert server.local_flow_control_window(sid) == lean.claims[sid].window
    assert b"".join(got) == bytes(sent)
    assert acks == [b"pingpong"]  # h2, the client's, answered the PING the server sent
    assert server.outbound_flow_control_window >= 2**30 + 65535 - window // 2
    # The stream's end goes through h2, which closes it.
    server.send_data(sid, b"bye", end_stream=True)
    lean.feed(server.data_to_send())
    assert sid not in lean.claims
    assert b"".join(got) == bytes(sent)
