"""The relay's routing state without sockets: forwarding, queues, presence, mesh gating."""

from __future__ import annotations

import pytest

from meshscale.errors import ProtocolError
from meshscale.plugins.derp import frames
from meshscale.plugins.derp.frames import Frame, FrameDecoder, FrameType, PeerGoneReason
from meshscale.plugins.derp.handshake import ClientInfo
from meshscale.plugins.derp.relay import Conn, Relay

SERVER = b"\xee" * 32
MESH = b"\x42" * 32
A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
DISCO = frames.DISCO_MAGIC + bytes(56)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(depth: int = 4) -> tuple[Relay, Clock]:
    clock = Clock()
    return Relay(SERVER, mesh_key=MESH, queue_depth=depth, clock=clock), clock


def connect(relay: Relay, key: bytes, info: ClientInfo | None = None, port: int = 1) -> Conn:
    conn = relay.new_conn(key, info or ClientInfo(), ("192.0.2.1", port))
    relay.register(conn)
    return conn


def sent(conn: Conn) -> list[Frame]:
    out, _ = conn.take()
    return FrameDecoder().feed(b"".join(out))


def send(relay: Relay, conn: Conn, dst: bytes, pkt: bytes) -> None:
    relay.handle_frame(conn, Frame(FrameType.SEND_PACKET, dst + pkt))


def test_packet_goes_to_destination_with_source_key() -> None:
    relay, _ = make()
    a, b = connect(relay, A), connect(relay, B)
    woke: list[int] = []
    b.wake = lambda: woke.append(1)
    send(relay, a, B, b"hello")
    assert woke == [1]
    assert sent(b) == [Frame(FrameType.RECV_PACKET, A + b"hello")]
    assert not a.has_pending()
    assert relay.stats.packets_recv == 1 and relay.stats.bytes_recv == 5


def test_full_queue_drops_oldest_and_never_blocks() -> None:
    relay, _ = make(depth=4)
    a, b = connect(relay, A), connect(relay, B)
    for i in range(10):
        send(relay, a, B, bytes([i]))
    got = [f.payload[32:] for f in sent(b)]
    assert got == [bytes([i]) for i in (6, 7, 8, 9)]  # the newest four
    assert relay.stats.dropped_queue_full == 6


def test_disco_has_its_own_queue() -> None:
    relay, _ = make(depth=2)
    a, b = connect(relay, A), connect(relay, B)
    send(relay, a, B, DISCO)
    for i in range(5):
        send(relay, a, B, bytes([i]))
    payloads = [f.payload[32:] for f in sent(b)]
    assert payloads[0] == DISCO  # not pushed out by data
    assert payloads[1:] == [b"\x03", b"\x04"]


def test_unknown_destination_peer_gone_only_for_disco_and_rate_limited() -> None:
    relay, clock = make()
    a = connect(relay, A)
    send(relay, a, C, b"wireguard")
    assert not a.has_pending()
    for _ in range(5):
        send(relay, a, C, DISCO)
    got = sent(a)
    assert len(got) == 3  # burst of 3
    assert got[0] == Frame(FrameType.PEER_GONE, C + bytes([PeerGoneReason.NOT_HERE]))
    clock.now += 1.0
    send(relay, a, C, DISCO)
    assert len(sent(a)) == 1
    assert relay.stats.dropped_unknown_dest == 7


def test_peer_gone_goes_to_those_who_received_from_the_leaver() -> None:
    relay, _ = make()
    a, b, c = connect(relay, A), connect(relay, B), connect(relay, C)
    send(relay, a, B, b"x")
    sent(b)
    relay.unregister(a)
    assert sent(b) == [Frame(FrameType.PEER_GONE, A + b"\x00")]
    assert not c.has_pending()  # c never heard from a
    assert not relay.is_connected(A)


def test_peer_gone_not_sent_to_a_receiver_that_left() -> None:
    relay, _ = make()
    a, b = connect(relay, A), connect(relay, B)
    send(relay, a, B, b"x")
    relay.unregister(b)
    relay.unregister(a)  # must not touch b's (cleared) queues
    assert not b.has_pending()


def test_ping_pong_echoes_first_eight_bytes_once_per_write() -> None:
    relay, _ = make()
    a = connect(relay, A)
    relay.handle_frame(a, Frame(FrameType.PING, b"abcdefgh" + b"future"))
    relay.handle_frame(a, Frame(FrameType.PING, b"12345678"))  # too fast: ignored
    assert sent(a) == [Frame(FrameType.PONG, b"abcdefgh")]
    relay.handle_frame(a, Frame(FrameType.PING, b"12345678"))
    assert sent(a) == [Frame(FrameType.PONG, b"12345678")]


def test_note_preferred_and_unknown_frames() -> None:
    relay, _ = make()
    a = connect(relay, A)
    relay.handle_frame(a, Frame(FrameType.NOTE_PREFERRED, b"\x01"))
    assert a.preferred and relay.home_client_count() == 1
    relay.handle_frame(a, Frame(0x7E, b"whatever"))  # skipped
    relay.handle_frame(a, Frame(FrameType.PONG, b"12345678"))  # skipped
    relay.handle_frame(a, Frame(FrameType.KEEP_ALIVE, b""))  # a server-only type: skipped
    assert not a.has_pending()


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.SEND_PACKET, b"short"),
        Frame(FrameType.NOTE_PREFERRED, b""),
        Frame(FrameType.PING, b"1234"),
        Frame(FrameType.WATCH_CONNS, b""),  # no mesh key
        Frame(FrameType.CLOSE_PEER, B),  # no mesh key
        Frame(FrameType.FORWARD_PACKET, A + B + b"x"),  # no mesh key
    ],
)
def test_malformed_or_unauthorised_frames_raise(frame: Frame) -> None:
    relay, _ = make()
    a = connect(relay, A)
    with pytest.raises(ProtocolError):
        relay.handle_frame(a, frame)


def test_mesh_key_checked_in_constant_time_and_gates_watch() -> None:
    relay, _ = make()
    assert not relay.is_mesh_peer(ClientInfo(mesh_key="00" * 32))
    assert not relay.is_mesh_peer(ClientInfo(mesh_key="zz"))
    assert relay.is_mesh_peer(ClientInfo(mesh_key=MESH.hex()))
    assert not Relay(SERVER).is_mesh_peer(ClientInfo(mesh_key=MESH.hex()))  # meshing off


def test_watch_conns_floods_present_then_streams_changes() -> None:
    relay, _ = make()
    a = connect(relay, A, port=1000)
    mesh = connect(relay, C, ClientInfo(mesh_key=MESH.hex()))
    relay.handle_frame(mesh, Frame(FrameType.WATCH_CONNS, b""))
    present = [frames.parse_peer_present(f.payload) for f in sent(mesh)]
    assert {p.key for p in present} == {A, C}
    pa = next(p for p in present if p.key == A)
    assert (pa.ip, pa.port, pa.flags) == ("192.0.2.1", 1000, 1)
    assert next(p for p in present if p.key == C).flags == frames.PeerPresentFlags.MESH_PEER
    b = connect(relay, B)
    relay.unregister(a)
    got = sent(mesh)
    assert got[0].type == FrameType.PEER_PRESENT and got[0].payload[:32] == B
    assert got[1] == Frame(FrameType.PEER_GONE, A + b"\x00")
    assert b.conn_id > 0


def test_forward_packet_delivers_locally_never_reforwards() -> None:
    relay, _ = make()
    mesh = connect(relay, C, ClientInfo(mesh_key=MESH.hex()))
    b = connect(relay, B)
    relay.handle_frame(mesh, Frame(FrameType.FORWARD_PACKET, A + B + b"fwd"))
    assert sent(b) == [Frame(FrameType.RECV_PACKET, A + b"fwd")]
    forwarded: list[tuple[bytes, bytes, bytes]] = []
    relay.add_remote(b"\x11" * 32, lambda s, d, p: forwarded.append((s, d, p)))
    relay.handle_frame(mesh, Frame(FrameType.FORWARD_PACKET, A + b"\x11" * 32 + b"no"))
    assert forwarded == []
    assert relay.stats.forwarded_in == 2


def test_send_to_key_on_another_mesh_server_uses_forwarder() -> None:
    relay, _ = make()
    a = connect(relay, A)
    forwarded: list[tuple[bytes, bytes, bytes]] = []

    def fwd(s: bytes, d: bytes, p: bytes) -> None:
        forwarded.append((s, d, p))

    relay.add_remote(B, fwd)
    send(relay, a, B, b"there")
    assert forwarded == [(A, B, b"there")]
    relay.remove_remote(B, fwd)
    send(relay, a, B, b"gone")
    assert len(forwarded) == 1


def test_close_peer_closes_every_connection_of_the_key() -> None:
    relay, _ = make()
    mesh = connect(relay, C, ClientInfo(mesh_key=MESH.hex()))
    b1, b2 = connect(relay, B, port=1), connect(relay, B, port=2)
    closed: list[int] = []
    b1.on_close = lambda: closed.append(1)
    b2.on_close = lambda: closed.append(2)
    relay.handle_frame(mesh, Frame(FrameType.CLOSE_PEER, B))
    assert sorted(closed) == [1, 2]


def test_duplicates_newest_then_last_speaker_is_active() -> None:
    relay, _ = make()
    a = connect(relay, A)
    b1 = connect(relay, B, port=1)
    b2 = connect(relay, B, port=2)
    send(relay, a, B, b"1")
    assert sent(b2) and not b1.has_pending()  # newest connection wins at first
    relay.handle_frame(b1, Frame(FrameType.NOTE_PREFERRED, b"\x01"))  # b1 speaks
    send(relay, a, B, b"2")
    assert sent(b1) and not b2.has_pending()
    relay.unregister(b1)
    send(relay, a, B, b"3")
    assert sent(b2)
    assert relay.connection_count() == 2
    send(relay, b2, A, b"reply")
    assert len(sent(a)) == 1
    relay.unregister(b2)
    assert sent(a) == [Frame(FrameType.PEER_GONE, B + b"\x00")]


def test_unregister_counts_undelivered_and_close_all() -> None:
    relay, _ = make()
    a, b = connect(relay, A), connect(relay, B)
    send(relay, a, B, b"x")
    relay.unregister(b)
    relay.unregister(b)  # idempotent
    assert relay.stats.dropped_gone == 1
    closed: list[bytes] = []
    a.on_close = lambda: closed.append(a.key)
    relay.close_all()
    assert closed == [A]
