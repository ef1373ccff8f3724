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


# ChaCha20-Poly1305's 12-byte nonce: four zero bytes, then the record counter big-endian.
_nonce = struct.Struct(">4xQ").pack
_RECORD_HEAD = struct.Struct(">BH")


class RecordEncoder:
    """Encrypts an outgoing byte stream into records, splitting at 4077 plaintext bytes.

    All records of one call are sealed into one buffer (``encrypt_into``): a 600 KB full map is
    about 150 records, and a bytes object per record and per concatenation was a third of the
    sealing cost."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        size = len(data)
        count = -(-size // MAX_PLAINTEXT)
        if self._counter + count > _MAX_NONCE:
            raise ProtocolError("nonce space exhausted")
        if count == 1:
            return self.seal(data)
        if count == 0:
            return b""
        out = bytearray(size + count * (HEADER_LEN + TAG_LEN))
        dst = memoryview(out)
        src = memoryview(data)
        pos = 0
        counter = self._counter
        seal = self._aead.encrypt_into
        for start in range(0, size, MAX_PLAINTEXT):
            chunk = src[start : start + MAX_PLAINTEXT]
            length = len(chunk) + TAG_LEN
            out[pos] = MSG_RECORD
            out[pos + 1] = length >> 8
            out[pos + 2] = length & 0xFF
            pos += HEADER_LEN
            seal(_nonce(counter), chunk, None, dst[pos : pos + length])
            pos += length
            counter += 1
        self._counter = counter
        return out


    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        """One record of at most MAX_PLAINTEXT bytes (every delta of a fan-out): plain
        ``encrypt`` is the cheaper call there."""
        if len(data) > MAX_PLAINTEXT:
            raise ValueError(f"{len(data)} bytes do not fit one Noise record")
        counter = self._counter
        if counter >= _MAX_NONCE:
            raise ProtocolError("nonce space exhausted")
        ct = self._aead.encrypt(_nonce(counter), data, None)
        self._counter = counter + 1
        return _RECORD_HEAD.pack(MSG_RECORD, len(ct)) + ct


class RecordDecoder:
    """Feeds received bytes; yields decrypted plaintext. Any bad record is fatal."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._counter = 0
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> bytes:
        size = len(data)
        if (not self._buf and TAG_LEN + HEADER_LEN <= size <= MAX_RECORD
                and data[0] == MSG_RECORD and (data[1] << 8 | data[2]) == size - HEADER_LEN
                and self._counter < _MAX_NONCE):
            # Exactly one whole record (a fan-out's delta): open it at once.
            try:
                plain = self._aead.decrypt(_nonce(self._counter), data[HEADER_LEN:], None)
            except InvalidTag:
                raise ProtocolError("Noise record failed authentication") from None
            self._counter += 1
            return plain
        # Records are opened in place from one buffer (offsets, no per-record slice of the
        # buffer and no per-record shift of it): a 64 KiB read is 16 records.
        if self._buf:
            self._buf += data
            data = self._buf
        view = memoryview(data)
        size = len(data)
        pos = 0
        out: list[bytes] = []
        try:
            while size - pos >= HEADER_LEN:
                mtype = data[pos]
                (length,) = struct.unpack_from(">H", data, pos + 1)
                if mtype != MSG_RECORD:
                    raise ProtocolError(f"unexpected Noise message type {mtype} after handshake")
                if HEADER_LEN + length > MAX_RECORD:
                    raise ProtocolError(
                        f"Noise record of {HEADER_LEN + length} bytes exceeds {MAX_RECORD}"
                    )
                if length < TAG_LEN:
                    raise ProtocolError(f"Noise record of {length} bytes is shorter than its tag")
                end = pos + HEADER_LEN + length
                if end > size:
                    break
                if self._counter >= _MAX_NONCE:
                    raise ProtocolError("nonce space exhausted")
                try:
                    out.append(self._aead.decrypt(_nonce(self._counter),
                                                  view[pos + HEADER_LEN : end], None))
                except InvalidTag:
                    raise ProtocolError("Noise record failed authentication") from None
                self._counter += 1
                pos = end
        finally:
            view.release()
        if data is self._buf:
            del self._buf[:pos]
        elif pos < size:
            self._buf += data[pos:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    @property
    def pending(self) -> int:
        return len(self._buf)
