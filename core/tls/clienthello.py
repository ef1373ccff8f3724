"""Sans-IO: the server name and ALPN protocols a TLS ClientHello asks for (RFC 8446 4.1.2).

The listener peeks at a connection's first bytes and picks the certificate before the handshake:
an ACME TLS-ALPN-01 validator (ALPN ``acme-tls/1`` only, RFC 8737) gets the challenge
certificate, everyone else the real one. Python's ssl module shows the server name to an SNI
callback but never the offered ALPN list, so this reads it from the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
#: More than any real ClientHello (post-quantum key shares included); beyond it we stop looking.
MAX_HELLO = 16 * 1024


class Incomplete(Enum):
    NEED_MORE = "need more bytes"


NEED_MORE = Incomplete.NEED_MORE


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None
    alpn: tuple[str, ...]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def take_all(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> _Reader:
        return _Reader(self.take(self.uint(len_bytes)))

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def parse(data: bytes) -> ClientHello | Incomplete | None:
    """The ClientHello at the start of ``data``; NEED_MORE if it is not all there yet; None if
    this is not a TLS ClientHello (or is malformed: the handshake then fails on its own)."""
    body = bytearray()
    pos = 0
    # The handshake message may span several records; gather payloads until it is complete.
    while True:
        if len(data) < pos + 5:
            return NEED_MORE if len(data) < MAX_HELLO else None
        if data[pos] != RECORD_HANDSHAKE or data[pos + 1] != 0x03:
            return None
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if length == 0 or length > MAX_HELLO:
            return None
        if len(data) < pos + 5 + length:
            return NEED_MORE if pos + 5 + length <= MAX_HELLO else None
        body += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != HANDSHAKE_CLIENT_HELLO:
                return None
            need = int.from_bytes(body[1:4], "big")
            if need > MAX_HELLO:
                return None
            if len(body) >= 4 + need:
                try:
                    return _hello(bytes(body[4:4 + need]))
                except ValueError:
                    return None


def _hello(msg: bytes) -> ClientHello:
    r = _Reader(msg)
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # legacy_session_id
    r.vector(2)  # cipher_suites
    r.vector(1)  # legacy_compression_methods
    name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.done:
        return ClientHello(None, ())
    exts = r.vector(2)
    while not exts.done:
        kind = exts.uint(2)
        ext = exts.vector(2)
        if kind == EXT_SERVER_NAME:
            names = ext.vector(2)
            while not names.done:
                name_type = names.uint(1)
                value = names.vector(2).take_all()
                if name_type == 0:  # host_name
                    name = value.decode("ascii", "replace")
        elif kind == EXT_ALPN:
            protos = ext.vector(2)
            found = []
            while not protos.done:
                found.append(protos.vector(1).take_all().decode("ascii", "replace"))
            alpn = tuple(found)
    return ClientHello(name, alpn)
