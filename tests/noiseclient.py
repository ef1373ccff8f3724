"""A Noise IK initiator written from protocol.md §3, independent of core's responder.

Used by unit tests (byte-level checks) and bad-input tests (a client that speaks ts2021).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def _h(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _kdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = hmac.new(ck, ikm, hashlib.blake2s).digest()
    a = hmac.new(prk, b"\x01", hashlib.blake2s).digest()
    return a, hmac.new(prk, a + b"\x02", hashlib.blake2s).digest()


def _pub(k: X25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(k: X25519PrivateKey, pub: bytes) -> bytes:
    return k.exchange(X25519PublicKey.from_public_bytes(pub))


class Initiator:
    def __init__(self, machine: X25519PrivateKey, server_pub: bytes, version: int = 130) -> None:
        self.machine = machine
        self.server_pub = server_pub
        self.version = version
        self.e = X25519PrivateKey.generate()

    def initiation(self) -> bytes:
        h = _h(b"Noise_IK_25519_ChaChaPoly_BLAKE2s")
        ck = h
        h = _h(h + b"Tailscale Control Protocol v%d" % self.version)
        h = _h(h + self.server_pub)
        e_pub = _pub(self.e)
        h = _h(h + e_pub)
        ck, k = _kdf(ck, _dh(self.e, self.server_pub))
        enc_s = ChaCha20Poly1305(k).encrypt(b"\0" * 12, _pub(self.machine), h)
        h = _h(h + enc_s)
        ck, k = _kdf(ck, _dh(self.machine, self.server_pub))
        tag = ChaCha20Poly1305(k).encrypt(b"\0" * 12, b"", h)
        h = _h(h + tag)
        self.h, self.ck = h, ck
        return struct.pack(">HBH", self.version, 1, 96) + e_pub + enc_s + tag

    def finish(self, response: bytes) -> tuple[bytes, bytes]:
        """Check the server's response; returns (send key, receive key)."""
        assert response[0] == 2 and struct.unpack(">H", response[1:3])[0] == 48
        e_s = response[3:35]
        h = _h(self.h + e_s)
        ck, _ = _kdf(self.ck, _dh(self.e, e_s))
        ck, k = _kdf(ck, _dh(self.machine, e_s))
        ChaCha20Poly1305(k).decrypt(b"\0" * 12, response[35:51], h)
        return _kdf(ck, b"")


def seal(key: bytes, counter: int, plaintext: bytes) -> bytes:
    ct = ChaCha20Poly1305(key).encrypt(b"\0\0\0\0" + counter.to_bytes(8, "big"), plaintext, None)
    return struct.pack(">BH", 4, len(ct)) + ct


def open_records(key: bytes, data: bytes, counter: int = 0) -> tuple[bytes, int]:
    out = b""
    while len(data) >= 3:
        ln = struct.unpack(">H", data[1:3])[0]
        if len(data) < 3 + ln:
            break
        out += ChaCha20Poly1305(key).decrypt(
            b"\0\0\0\0" + counter.to_bytes(8, "big"), data[3:3 + ln], None)
        counter += 1
        data = data[3 + ln:]
    return out, counter
