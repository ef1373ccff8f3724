"""The simulated node's side of ``/key`` and the Noise IK handshake (protocol.md §2-3).

For tests and the load generator (meshscale.simclient and meshscale.bench); loopback servers only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.noise.handshake import (
    PROLOGUE_PREFIX,
    SymmetricState,
    dh,
    public_bytes,
)

CAPVER = 130  # Tailscale v1.90


def make_initiation(
    machine: X25519PrivateKey, server_pub: bytes, version: int
) -> tuple[bytes, SymmetricState, X25519PrivateKey]:
    ss = SymmetricState(PROLOGUE_PREFIX + str(version).encode())
    ss.mix_hash(server_pub)
    e = X25519PrivateKey.generate()
    e_pub = public_bytes(e)
    ss.mix_hash(e_pub)
    key = ss.mix_dh(dh(e, server_pub))
    enc_s = ss.encrypt_and_hash(key, public_bytes(machine))
    key = ss.mix_dh(dh(machine, server_pub))
    tag = ss.encrypt_and_hash(key, b"")
    return struct.pack(">HBH", version, 1, 96) + e_pub + enc_s + tag, ss, e


def finish_handshake(
    ss: SymmetricState, e: X25519PrivateKey, machine: X25519PrivateKey, response: bytes
) -> tuple[bytes, bytes]:
    if len(response) != 51 or response[0] != 2:
        raise ConnectionError(f"bad handshake response {response[:8].hex()}")
    e_s = response[3:35]
    ss.mix_hash(e_s)
    ss.mix_dh(dh(e, e_s))
    key = ss.mix_dh(dh(machine, e_s))
    ss.decrypt_and_hash(key, response[35:51])
    return ss.split()  # (send, receive) for the initiator


def upgrade_request(host: str, port: int, init: bytes) -> bytes:
    """The HTTP/1.1 request that upgrades to the control protocol, carrying the initiation."""
    return (f"POST /ts2021 HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n"
            "Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
            f"X-Tailscale-Handshake: {base64.b64encode(init).decode()}\r\n\r\n").encode()


async def fetch_server_key(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET /key?v={CAPVER} HTTP/1.1\r\nHost: {host}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    key: str = json.loads(body)["publicKey"]
    return bytes.fromhex(key.removeprefix("mkey:"))
