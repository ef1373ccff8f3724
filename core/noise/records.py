"""Noise transport records after the handshake (sans-IO).

Record: ``0x04 | u16be ciphertext length | ChaCha20-Poly1305(plaintext) || tag``, at most 4096
bytes on the wire. Nonces are 4 zero bytes followed by a 64-bit BIG-endian counter (unlike the
Noise spec); protocol.md §3.7.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshscale.errors import ProtocolError
from meshscale.noise.handshake import MSG_RECORD

MAX_RECORD = 4096  # including the 3-byte header
HEADER_LEN = 3
TAG_LEN = 16
MAX_PLAINTEXT = MAX_RECORD - HEADER_LEN - TAG_LEN  # 4077
_MAX_NONCE = 2**64 - 1


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class RecordEncoder:
    """Encrypts an outgoing byte stream into records, splitting at 4077 plaintext bytes."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def encode(self, data: bytes) -> bytes:
        out = bytearray()
        view = memoryview(data)
        for start in range(0, len(data), MAX_PLAINTEXT):
            out += self._one(bytes(view[start : start + MAX_PLAINTEXT]))
        return bytes(out)

    def _one(self, chunk: bytes) -> bytes:
        if self._counter >= _MAX_NONCE:
            raise ProtocolError("nonce space exhausted")
        ct = self._aead.encrypt(_nonce(self._counter), chunk, None)
        self._counter += 1
        return struct.pack(">BH", MSG_RECORD, len(ct)) + ct


class RecordDecoder:
    """Feeds received bytes; yields decrypted plaintext. Any bad record is fatal."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while len(self._buf) >= HEADER_LEN:
            mtype = self._buf[0]
            (length,) = struct.unpack_from(">H", self._buf, 1)
            if mtype != MSG_RECORD:
                raise ProtocolError(f"unexpected Noise message type {mtype} after handshake")
            if HEADER_LEN + length > MAX_RECORD:
                raise ProtocolError(
                    f"Noise record of {HEADER_LEN + length} bytes exceeds {MAX_RECORD}"
                )
            if length < TAG_LEN:
                raise ProtocolError(f"Noise record of {length} bytes is shorter than its tag")
            if len(self._buf) < HEADER_LEN + length:
                break
            ct = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
            del self._buf[: HEADER_LEN + length]
            if self._counter >= _MAX_NONCE:
                raise ProtocolError("nonce space exhausted")
            try:
                out += self._aead.decrypt(_nonce(self._counter), ct, None)
            except InvalidTag:
                raise ProtocolError("Noise record failed authentication") from None
            self._counter += 1
        return bytes(out)

    @property
    def pending(self) -> int:
        return len(self._buf)
