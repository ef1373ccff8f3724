"""STUN bytes: the worked examples of protocol.md §9, and what gets dropped."""

from __future__ import annotations

import struct

import pytest

from meshscale.plugins.stun import codec

TXID = bytes(range(1, 13))
# tailscaled's 40-byte request with txid 01..0c (protocol.md §9).
REQUEST = bytes.fromhex(
    "000100142112a442" "0102030405060708090a0b0c" "802200087461696c6e6f6465" "80280004b32c370f"
)


def test_worked_request_parses() -> None:
    req = codec.parse_binding_request(REQUEST)
    assert req == codec.BindingRequest(TXID, b"tailnode", True)
    assert codec.binding_request(TXID) == REQUEST


def test_worked_response_v4() -> None:
    # The answer for 192.0.2.1:41641.
    attr = bytes.fromhex("002000080001" "83bb" "e112a643")
    want = bytes.fromhex("0101000c2112a442") + TXID + attr
    assert codec.binding_response(TXID, "192.0.2.1", 41641) == want
    parsed = codec.parse_binding_response(want)
    assert parsed == codec.BindingResponse(TXID, "192.0.2.1", 41641)


def test_response_v6_and_mapped_v4() -> None:
    out = codec.binding_response(TXID, "2001:db8::1", 3478)
    assert out[:4] == bytes.fromhex("01010018")  # 24 bytes of attributes
    assert out[20:24] == bytes.fromhex("00200014")
    assert out[25] == 0x02
    assert struct.unpack(">H", out[26:28])[0] == 3478 ^ 0x2112
    key = bytes.fromhex("2112a442") + TXID
    addr = bytes(a ^ b for a, b in zip(out[28:44], key, strict=True))
    assert addr == bytes.fromhex("20010db8000000000000000000000001")
    assert codec.parse_binding_response(out) == codec.BindingResponse(TXID, "2001:db8::1", 3478)
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; answer with the IPv4 form.
    assert codec.binding_response(TXID, "::ffff:192.0.2.1", 41641) == codec.binding_response(
        TXID, "192.0.2.1", 41641
    )


def test_lenient_without_software_or_fingerprint() -> None:
    bare = bytes.fromhex("000100002112a442") + TXID
    assert codec.parse_binding_request(bare) == codec.BindingRequest(TXID, None, False)
    no_fp = bytes.fromhex("0001000c2112a442") + TXID + REQUEST[20:32]
    req = codec.parse_binding_request(no_fp)
    assert req is not None and req.software == b"tailnode" and not req.fingerprint


def _with_odd_software() -> bytes:
    # SOFTWARE of 3 bytes is padded to 4.
    body = struct.pack(">HH", 0x8022, 3) + b"abc\x00"
    return struct.pack(">HHI", 1, len(body), 0x2112A442) + TXID + body


@pytest.mark.parametrize(
    "data",
    [
        b"",
        REQUEST[:19],
        REQUEST[:-4] + b"\x00\x00\x00\x00",  # wrong FINGERPRINT
        REQUEST[:4] + b"\x00\x00\x00\x00" + REQUEST[8:],  # no magic cookie (RFC 3489)
        bytes.fromhex("0101") + REQUEST[2:],  # a response, not a request
        bytes.fromhex("0003") + REQUEST[2:],  # another method
        bytes.fromhex("4001") + REQUEST[2:],  # top bits set: not STUN
        REQUEST[:2] + b"\x00\x18" + REQUEST[4:],  # length disagrees with the datagram
        REQUEST + b"\x00\x00\x00\x00",  # trailing bytes
        REQUEST[:2] + b"\x00\x13" + REQUEST[4:-1],  # length not a multiple of 4
        bytes.fromhex("000100082112a442") + TXID + bytes.fromhex("80220010" "74616931"),  # overrun
        # FINGERPRINT not last:
        bytes.fromhex("0001001c2112a442") + TXID + REQUEST[20:] + bytes.fromhex("80220000"),
    ],
)
def test_garbage_is_dropped(data: bytes) -> None:
    assert codec.parse_binding_request(data) is None


def test_padding_is_respected() -> None:
    req = codec.parse_binding_request(_with_odd_software())
    assert req is not None and req.software == b"abc"


def test_response_parser_falls_back_to_mapped_address() -> None:
    value = struct.pack(">BBH", 0, 1, 5000) + bytes([198, 51, 100, 7])
    attr = struct.pack(">HH", 0x0001, len(value)) + value
    data = struct.pack(">HHI", 0x0101, len(attr), 0x2112A442) + TXID + attr
    assert codec.parse_binding_response(data) == codec.BindingResponse(TXID, "198.51.100.7", 5000)


def test_bad_txid() -> None:
    with pytest.raises(ValueError):
        codec.binding_response(b"short", "192.0.2.1", 1)
