"""STUN binding requests and responses, sans-IO (the RFC 5389 subset Tailscale uses, §9).

We answer a Binding Request with a Binding Success Response carrying only XOR-MAPPED-ADDRESS,
like Tailscale's own server. Parsing is lenient where that costs nothing: SOFTWARE and
FINGERPRINT are optional. A FINGERPRINT that is present must be right, though: a wrong one means
the datagram is damaged or is not STUN at all. Anything else (other methods, responses, classic
RFC 3489 requests without the magic cookie, truncated attributes) is dropped: ``None``.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass

MAGIC_COOKIE = 0x2112A442
HEADER_LEN = 20
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_ALT = 0x8020  # off-spec code some servers use; clients accept it
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E

_HEADER = struct.Struct(">HHI12s")
_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")


@dataclass(frozen=True, slots=True)
class BindingRequest:
    txid: bytes
    software: bytes | None = None
    fingerprint: bool = False  # present (and correct)


def fingerprint(data: bytes) -> int:
    return (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def parse_binding_request(data: bytes) -> BindingRequest | None:
    if len(data) < HEADER_LEN or data[0] & 0xC0:
        return None
    msg_type, length, cookie, txid = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or msg_type != BINDING_REQUEST:
        return None
    if length % 4 or HEADER_LEN + length != len(data):
        return None
    software: bytes | None = None
    has_fingerprint = False
    pos = HEADER_LEN
    while pos < len(data):
        if len(data) - pos < 4:
            return None
        atype, alen = struct.unpack_from(">HH", data, pos)
        value_end = pos + 4 + alen
        if value_end > len(data):
            return None
        if atype == ATTR_SOFTWARE:
            software = data[pos + 4 : value_end]
        elif atype == ATTR_FINGERPRINT:
            # FINGERPRINT is last and covers everything before it (RFC 5389 §15.5).
            if alen != 4 or value_end != len(data):
                return None
            (got,) = struct.unpack_from(">I", data, pos + 4)
            if got != fingerprint(data[:pos]):
                return None
            has_fingerprint = True
        pos = value_end + (-alen % 4)  # values are padded to a multiple of 4
    return BindingRequest(txid, software, has_fingerprint)


def binding_request(txid: bytes, software: bytes = b"tailnode") -> bytes:
    """A request like tailscaled's: SOFTWARE then FINGERPRINT (40 bytes with "tailnode")."""
    if len(txid) != 12:
        raise ValueError("a STUN transaction ID is 12 bytes")
    soft = _attr(ATTR_SOFTWARE, software)
    length = len(soft) + 8
    head = _HEADER.pack(BINDING_REQUEST, length, MAGIC_COOKIE, txid) + soft
    return head + struct.pack(">HHI", ATTR_FINGERPRINT, 4, fingerprint(head))


def binding_response(txid: bytes, ip: str, port: int) -> bytes:
    """Binding Success Response with XOR-MAPPED-ADDRESS for ``ip:port`` (v4 or v6)."""
    if len(txid) != 12:
        raise ValueError("a STUN transaction ID is 12 bytes")
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket reports v4 clients as ::ffff:a.b.c.d
    family = 0x01 if addr.version == 4 else 0x02
    key = _COOKIE + txid
    xaddr = bytes(a ^ b for a, b in zip(addr.packed, key, strict=False))
    value = struct.pack(">BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xaddr
    attr = _attr(ATTR_XOR_MAPPED_ADDRESS, value)
    return _HEADER.pack(BINDING_SUCCESS, len(attr), MAGIC_COOKIE, txid) + attr


@dataclass(frozen=True, slots=True)
class BindingResponse:
    txid: bytes
    ip: str
    port: int


def parse_binding_response(data: bytes) -> BindingResponse | None:
    """The mapped address from a success response (client side; used by tests and tools)."""
    if len(data) < HEADER_LEN or data[0] & 0xC0:
        return None
    msg_type, length, cookie, txid = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or msg_type != BINDING_SUCCESS or HEADER_LEN + length > len(data):
        return None
    pos, end = HEADER_LEN, HEADER_LEN + length
    fallback: BindingResponse | None = None
    while end - pos >= 4:
        atype, alen = struct.unpack_from(">HH", data, pos)
        value = data[pos + 4 : pos + 4 + alen]
        if len(value) < alen:
            return None
        if atype in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_ALT):
            return _address(value, _COOKIE + txid, txid)
        if atype == ATTR_MAPPED_ADDRESS:
            fallback = _address(value, None, txid)
        pos += 4 + alen + (-alen % 4)
    return fallback


def _address(value: bytes, xor_key: bytes | None, txid: bytes) -> BindingResponse | None:
    if len(value) < 8:
        return None
    family = value[1]
    size = 4 if family == 0x01 else 16 if family == 0x02 else 0
    if not size or len(value) < 4 + size:
        return None
    (port,) = struct.unpack_from(">H", value, 2)
    raw = value[4 : 4 + size]
    if xor_key is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor_key, strict=False))
    return BindingResponse(txid, str(ipaddress.ip_address(raw)), port)


def _attr(atype: int, value: bytes) -> bytes:
    return struct.pack(">HH", atype, len(value)) + value + b"\x00" * (-len(value) % 4)
