"""Sans-IO Noise: the responder against an initiator written from protocol.md."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.errors import ProtocolError
from meshscale.noise import handshake
from meshscale.noise.records import MAX_PLAINTEXT, MAX_RECORD, RecordDecoder, RecordEncoder
from tests.noiseclient import Initiator, open_records, seal


@pytest.fixture
def server_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def test_handshake_agrees_with_independent_initiator(server_key: X25519PrivateKey) -> None:
    machine = X25519PrivateKey.generate()
    client = Initiator(machine, handshake.public_bytes(server_key), version=130)
    init = client.initiation()
    assert len(init) == 101 and init[:5] == bytes.fromhex("0082010060")
    result = handshake.respond(server_key, init)
    assert len(result.response) == 51 and result.response[:3] == b"\x02\x00\x30"
    assert result.peer_static == handshake.public_bytes(machine)
    assert result.version == 130
    c_send, c_recv = client.finish(result.response)
    assert (c_send, c_recv) == (result.recv_key, result.send_key)


def test_records_roundtrip_big_endian_nonces(server_key: X25519PrivateKey) -> None:
    client = Initiator(X25519PrivateKey.generate(), handshake.public_bytes(server_key))
    result = handshake.respond(server_key, client.initiation())
    c_send, c_recv = client.finish(result.response)
    dec = RecordDecoder(result.recv_key)
    # Counter 1 with a big-endian nonce differs from little-endian from the second record on.
    wire = seal(c_send, 0, b"first") + seal(c_send, 1, b"second")
    assert dec.feed(wire[:5]) == b""  # partial record: nothing yet
    assert dec.feed(wire[5:]) == b"firstsecond"
    enc = RecordEncoder(result.send_key)
    big = bytes(range(256)) * 40  # 10240 bytes -> 3 records
    out = enc.encode(big)
    assert out[0] == 4
    plain, count = open_records(c_recv, out)
    assert plain == big and count == 3
    assert all(
        len(rec) <= MAX_RECORD for rec in [out[:MAX_RECORD]]
    ) and MAX_PLAINTEXT == 4077


@pytest.mark.parametrize("index", range(101))
def test_flipping_any_initiation_byte_fails(server_key: X25519PrivateKey, index: int) -> None:
    client = Initiator(X25519PrivateKey.generate(), handshake.public_bytes(server_key))
    init = bytearray(client.initiation())
    init[index] ^= 0x01
    if index < 2:
        # The version bytes feed the prologue: the handshake must fail authentication.
        with pytest.raises(ProtocolError):
            handshake.respond(server_key, bytes(init))
        return
    with pytest.raises(ProtocolError):
        handshake.respond(server_key, bytes(init))


def test_flipping_any_record_byte_fails(server_key: X25519PrivateKey) -> None:
    client = Initiator(X25519PrivateKey.generate(), handshake.public_bytes(server_key))
    result = handshake.respond(server_key, client.initiation())
    c_send, _ = client.finish(result.response)
    record = seal(c_send, 0, b"hello, control")
    for i in range(len(record)):
        bad = bytearray(record)
        bad[i] ^= 0x80
        dec = RecordDecoder(result.recv_key)
        with pytest.raises(ProtocolError):
            # A flipped length byte makes the decoder wait for more; the padding completes the
            # record, which then must fail authentication (or exceed the limit).
            assert dec.feed(bytes(bad)) == b""
            dec.feed(b"\x00" * 40000)


def test_framing_limits(server_key: X25519PrivateKey) -> None:
    dec = RecordDecoder(b"\x00" * 32)
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.feed(b"\x04" + (4094).to_bytes(2, "big"))  # 3 + 4094 > 4096
    with pytest.raises(ProtocolError, match="type"):
        RecordDecoder(b"\x00" * 32).feed(b"\x05\x00\x10" + b"\x00" * 16)
    with pytest.raises(ProtocolError, match="shorter"):
        RecordDecoder(b"\x00" * 32).feed(b"\x04\x00\x05" + b"\x00" * 5)
    with pytest.raises(ProtocolError, match="101"):
        handshake.respond(server_key, b"\x00" * 100)


def test_error_message_layout() -> None:
    assert handshake.error_message("no") == b"\x03\x00\x02no"


@pytest.mark.parametrize("size", [0, 1, 62, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1,
                                  3 * MAX_PLAINTEXT, 100_000])
def test_encoder_matches_one_seal_per_record(size: int) -> None:
    """The encoder's records are, byte for byte, 0x04 | u16be length | seal(counter, chunk)."""
    key = bytes(range(32))
    enc = RecordEncoder(key)
    enc.encode(b"x" * 10)  # counter 0 used: the next call starts at 1
    data = bytes(i % 251 for i in range(size))
    want = b"".join(seal(key, 1 + n, data[i:i + MAX_PLAINTEXT])
                    for n, i in enumerate(range(0, size, MAX_PLAINTEXT)))
    assert bytes(enc.encode(data)) == want
    # A memoryview is taken as is, and the counter went on by the records above.
    assert bytes(enc.encode(memoryview(b"tail!"))) == seal(
        key, 1 + len(range(0, size, MAX_PLAINTEXT)), b"tail!")


def test_seal_is_one_record_and_shares_the_counter() -> None:
    key = bytes(range(32))
    enc = RecordEncoder(key)
    assert enc.seal(b"first") == seal(key, 0, b"first")
    assert bytes(enc.encode(b"second")) == seal(key, 1, b"second")
    assert enc.seal(bytes(MAX_PLAINTEXT)) == seal(key, 2, bytes(MAX_PLAINTEXT))
    with pytest.raises(ValueError, match="do not fit"):
        enc.seal(bytes(MAX_PLAINTEXT + 1))
    assert enc.seal(b"") == seal(key, 3, b"")  # the refusal above used no nonce


def test_records_split_at_every_cut(server_key: X25519PrivateKey) -> None:
    # Reads cut anywhere: inside a header, inside a record, exactly at a record's end (the
    # one-record fast path), or several records at once.
    client = Initiator(X25519PrivateKey.generate(), handshake.public_bytes(server_key))
    result = handshake.respond(server_key, client.initiation())
    c_send, _ = client.finish(result.response)
    plain = [b"a" * 70, b"", b"b" * MAX_PLAINTEXT, b"c"]
    wire = b"".join(seal(c_send, i, p) for i, p in enumerate(plain))
    for first in range(len(wire) + 1):
        for second in (first, min(first + 89, len(wire)), len(wire)):
            dec = RecordDecoder(result.recv_key)
            got = dec.feed(wire[:first]) + dec.feed(wire[first:second]) + dec.feed(wire[second:])
            assert got == b"".join(plain) and dec.pending == 0
