"""DERP frames byte for byte (protocol.md §8.3, §8.4)."""

from __future__ import annotations

import pytest

from meshscale.errors import ProtocolError
from meshscale.plugins.derp import frames
from meshscale.plugins.derp.frames import Frame, FrameDecoder, FrameType

K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def test_server_key_frame_is_45_bytes_with_magic() -> None:
    out = frames.server_key(K1)
    assert out[:5] == bytes.fromhex("0100000028")
    assert out[5:13] == bytes.fromhex("44455250f09f9491")
    assert out[13:] == K1
    assert len(out) == 45
    assert frames.parse_server_key(out[5:]) == K1
    # Future bytes after the key are allowed.
    assert frames.parse_server_key(out[5:] + b"xx") == K1


def test_server_key_bad_magic() -> None:
    with pytest.raises(ProtocolError):
        frames.parse_server_key(b"DERQ\xf0\x9f\x94\x91" + K1)
    with pytest.raises(ProtocolError):
        frames.parse_server_key(frames.MAGIC + K1[:31])


def test_send_and_recv_packet() -> None:
    assert frames.send_packet(K2, b"hi") == b"\x04\x00\x00\x00\x22" + K2 + b"hi"
    assert frames.recv_packet(K1, b"hi") == b"\x05\x00\x00\x00\x22" + K1 + b"hi"
    assert frames.parse_send_packet(K2 + b"hi") == (K2, b"hi")
    assert frames.forward_packet(K1, K2, b"x") == b"\x0a\x00\x00\x00\x41" + K1 + K2 + b"x"
    assert frames.parse_forward_packet(K1 + K2 + b"x") == (K1, K2, b"x")


def test_fixed_frames() -> None:
    assert bytes.fromhex("0600000000") == frames.KEEP_ALIVE
    assert bytes.fromhex("1000000000") == frames.WATCH_CONNS
    assert frames.note_preferred(True) == bytes.fromhex("070000000101")
    assert frames.note_preferred(False) == bytes.fromhex("070000000100")
    assert frames.ping(b"12345678") == b"\x12\x00\x00\x00\x08" + b"12345678"
    assert frames.pong(b"12345678") == b"\x13\x00\x00\x00\x08" + b"12345678"
    assert frames.peer_gone(K1) == b"\x08\x00\x00\x00\x21" + K1 + b"\x00"
    assert frames.peer_gone(K1, frames.PeerGoneReason.NOT_HERE)[-1] == 1
    assert frames.close_peer(K1) == b"\x11\x00\x00\x00\x20" + K1
    assert frames.health("dup") == b"\x14\x00\x00\x00\x03dup"
    assert frames.health("") == bytes.fromhex("1400000000")
    assert frames.restarting(1000, 5000) == bytes.fromhex("1500000008000003e800001388")
    assert frames.parse_restarting(bytes.fromhex("000003e800001388")) == (1000, 5000)


def test_peer_present_layout() -> None:
    out = frames.peer_present(K1, "192.0.2.1", 41641, frames.PeerPresentFlags.REGULAR)
    assert out[:5] == b"\x09\x00\x00\x00\x33"  # 32 + 16 + 2 + 1 = 51
    assert out[5:37] == K1
    assert out[37:53] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert out[53:55] == (41641).to_bytes(2, "big")
    assert out[55] == 1
    parsed = frames.parse_peer_present(out[5:])
    assert (parsed.key, parsed.ip, parsed.port, parsed.flags) == (K1, "192.0.2.1", 41641, 1)
    v6 = frames.parse_peer_present(frames.peer_present(K1, "2001:db8::1", 7)[5:])
    assert (v6.ip, v6.port) == ("2001:db8::1", 7)
    # Older servers send only the key.
    old = frames.parse_peer_present(K1)
    assert old.key == K1 and old.ip is None


def test_payload_parsers_refuse_malformed() -> None:
    with pytest.raises(ProtocolError):
        frames.parse_send_packet(K1[:31])
    with pytest.raises(ProtocolError):
        frames.parse_send_packet(K1 + bytes(frames.MAX_PACKET_SIZE + 1))
    assert frames.parse_send_packet(K1 + bytes(frames.MAX_PACKET_SIZE))[1] == bytes(65536)
    with pytest.raises(ProtocolError):
        frames.parse_note_preferred(b"")
    with pytest.raises(ProtocolError):
        frames.parse_ping(b"1234567")
    assert frames.parse_ping(b"12345678" + bytes(992)) == b"12345678"
    with pytest.raises(ProtocolError):
        frames.parse_ping(bytes(1001))
    with pytest.raises(ProtocolError):
        frames.parse_key(K1 + b"x", "ClosePeer")
    with pytest.raises(ProtocolError):
        frames.parse_forward_packet(K1 + K2[:10])


def test_encoders_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="key"):
        frames.send_packet(b"short", b"")
    with pytest.raises(ValueError, match="exceeds"):
        frames.send_packet(K1, bytes(frames.MAX_PACKET_SIZE + 1))
    with pytest.raises(ValueError):
        frames.ping(b"123")


def test_decoder_splits_and_joins_chunks() -> None:
    stream = frames.KEEP_ALIVE + frames.recv_packet(K1, b"abc") + frames.ping(b"pingpong")
    dec = FrameDecoder()
    got: list[Frame] = []
    for i in range(len(stream)):  # one byte at a time
        got += dec.feed(stream[i : i + 1])
    assert got == [
        Frame(FrameType.KEEP_ALIVE, b""),
        Frame(FrameType.RECV_PACKET, K1 + b"abc"),
        Frame(FrameType.PING, b"pingpong"),
    ]
    assert dec.buffered == 0
    # All at once, plus half of the next header.
    got = FrameDecoder().feed(stream + b"\x06\x00")
    assert len(got) == 3


def test_decoder_refuses_oversized_header_before_payload() -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError, match="announces"):
        dec.feed(b"\x04" + (frames.MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    # Exactly the limit is fine (the payload just has not arrived).
    assert FrameDecoder().feed(b"\x04" + frames.MAX_FRAME_SIZE.to_bytes(4, "big")) == []


def test_decoder_passes_unknown_types() -> None:
    assert FrameDecoder().feed(b"\x7f\x00\x00\x00\x02hi") == [Frame(0x7F, b"hi")]


def test_disco_detection() -> None:
    disco = frames.DISCO_MAGIC + bytes(56)
    assert frames.looks_like_disco(disco)
    assert not frames.looks_like_disco(disco[:-1])
    assert not frames.looks_like_disco(b"\x01" + disco[1:])
