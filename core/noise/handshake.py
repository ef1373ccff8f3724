"""Noise IK responder for Tailscale's ts2021 control protocol (sans-IO).

``Noise_IK_25519_ChaChaPoly_BLAKE2s`` with the prologue ``Tailscale Control Protocol v<N>``,
where N is the capability version in the initiation header. Both handshake messages carry an empty
payload. protocol.md §3.4-3.6 has the byte layout; this module is that, and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshscale.errors import ProtocolError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_ERROR = 3
MSG_RECORD = 4

INITIATION_LEN = 101  # 5-byte header + e (32) + enc(s) (48) + tag (16)
RESPONSE_LEN = 51  # 3-byte header + e (32) + tag (16)
_ZERO_NONCE = b"\x00" * 12


def blake2s(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with HMAC-BLAKE2s (not BLAKE2s' keyed mode), two outputs."""
    prk = hmac.new(ck, ikm, hashlib.blake2s).digest()
    t1 = hmac.new(prk, b"\x01", hashlib.blake2s).digest()
    t2 = hmac.new(prk, t1 + b"\x02", hashlib.blake2s).digest()
    return t1, t2


def public_bytes(priv: X25519PrivateKey) -> bytes:
    return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(priv: X25519PrivateKey, pub: bytes) -> bytes:
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(pub))
    except ValueError as exc:  # all-zero result (low-order point): Go aborts too
        raise ProtocolError(f"invalid DH: {exc}") from None
    return shared


class SymmetricState:
    """The running ``h``/``ck`` pair of a Noise handshake."""

    def __init__(self, prologue: bytes) -> None:
        self.h = blake2s(PROTOCOL_NAME)  # 33-byte name, so it is hashed
        self.ck = self.h
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = blake2s(self.h + data)

    def mix_dh(self, shared: bytes) -> bytes:
        self.ck, key = hkdf2(self.ck, shared)
        return key

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes:
        try:
            plain = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, self.h)
        except InvalidTag:
            raise ProtocolError("handshake authentication failed") from None
        self.mix_hash(ciphertext)
        return plain

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(ciphertext)
        return ciphertext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key)."""
        return hkdf2(self.ck, b"")


@dataclass(frozen=True, slots=True)
class Initiation:
    version: int  # the client's capability version
    ephemeral: bytes
    encrypted_static: bytes
    tag: bytes


def parse_initiation(msg: bytes) -> Initiation:
    if len(msg) != INITIATION_LEN:
        raise ProtocolError(
            f"handshake initiation is {len(msg)} bytes, want {INITIATION_LEN}"
        )
    version, mtype, length = struct.unpack(">HBH", msg[:5])
    if mtype != MSG_INITIATION:
        raise ProtocolError(f"handshake message type {mtype}, want {MSG_INITIATION}")
    if length != INITIATION_LEN - 5:
        raise ProtocolError(f"handshake payload length {length}, want {INITIATION_LEN - 5}")
    return Initiation(version, msg[5:37], msg[37:85], msg[85:101])


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    response: bytes  # the 51 bytes to write after the 101
    peer_static: bytes  # the client's machine key: the connection's identity
    version: int
    send_key: bytes  # server -> client
    recv_key: bytes  # client -> server
    handshake_hash: bytes


def respond(
    static: X25519PrivateKey, initiation: bytes, ephemeral: X25519PrivateKey | None = None
) -> HandshakeResult:
    """Run the responder side on a received initiation. ``ephemeral`` is for tests only."""
    init = parse_initiation(initiation)
    ss = SymmetricState(PROLOGUE_PREFIX + str(init.version).encode())
    ss.mix_hash(public_bytes(static))  # <- s (pre-message)
    ss.mix_hash(init.ephemeral)  # -> e
    key = ss.mix_dh(dh(static, init.ephemeral))  # es
    peer_static = ss.decrypt_and_hash(key, init.encrypted_static)  # -> s
    key = ss.mix_dh(dh(static, peer_static))  # ss
    if ss.decrypt_and_hash(key, init.tag) != b"":
        raise ProtocolError("handshake initiation carries a payload")
    e = ephemeral or X25519PrivateKey.generate()
    e_pub = public_bytes(e)
    ss.mix_hash(e_pub)  # <- e
    ss.mix_dh(dh(e, init.ephemeral))  # ee (key unused)
    key = ss.mix_dh(dh(e, peer_static))  # se
    tag = ss.encrypt_and_hash(key, b"")
    c1, c2 = ss.split()
    response = struct.pack(">BH", MSG_RESPONSE, RESPONSE_LEN - 3) + e_pub + tag
    return HandshakeResult(response, peer_static, init.version, c2, c1, ss.h)


def error_message(text: str) -> bytes:
    """An unauthenticated error message the client logs before the connection closes."""
    data = text.encode()[:65535]
    return struct.pack(">BH", MSG_ERROR, len(data)) + data
