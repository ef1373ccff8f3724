"""The DERP login exchange, sans-IO: ServerKey, ClientInfo and ServerInfo (protocol.md §8.4).

ClientInfo and ServerInfo are JSON sealed in a NaCl box (X25519 + XSalsa20-Poly1305); PyNaCl's
``Box.encrypt`` output (nonce ‖ MAC ‖ ciphertext) is byte for byte what Go's ``box.Seal`` makes.
A client's DERP identity is its node (WireGuard) key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from meshscale.errors import ProtocolError
from meshscale.plugins.derp import frames
from meshscale.plugins.derp.frames import KEY_LEN, NONCE_LEN, FrameType


@dataclass(frozen=True, slots=True)
class ClientInfo:
    version: int = frames.PROTOCOL_VERSION
    mesh_key: str = ""  # 64 hex digits when the client is a trusted mesh peer
    can_ack_pings: bool = False
    is_prober: bool = False

    def to_json(self) -> bytes:
        out: dict[str, Any] = {"version": self.version, "CanAckPings": self.can_ack_pings}
        if self.mesh_key:
            out["meshKey"] = self.mesh_key
        if self.is_prober:
            out["IsProber"] = True
        return json.dumps(out, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ClientInfo:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"ClientInfo is not JSON: {exc}") from None
        except RecursionError:  # 256 KiB of "[" from any stranger who can seal a box
            raise ProtocolError("ClientInfo is nested too deeply") from None
        if not isinstance(raw, dict):
            raise ProtocolError("ClientInfo must be a JSON object")
        # Go's decoder matches field names case-insensitively; so do we.
        low = {str(k).lower(): v for k, v in raw.items()}
        version = low.get("version", 0)
        mesh_key = low.get("meshkey", "")
        return cls(
            version=version if isinstance(version, int) and not isinstance(version, bool) else 0,
            mesh_key=mesh_key if isinstance(mesh_key, str) else "",
            can_ack_pings=low.get("canackpings") is True,
            is_prober=low.get("isprober") is True,
        )


def server_info_json(version: int = frames.PROTOCOL_VERSION) -> bytes:
    # No token-bucket fields: they ask the client to rate-limit itself, which we do not want.
    return json.dumps({"version": version}, separators=(",", ":")).encode()


# -- server side --------------------------------------------------------------------------------


def server_key_frame(server_private: PrivateKey) -> bytes:
    return frames.server_key(bytes(server_private.public_key))


def open_client_info(server_private: PrivateKey, payload: bytes) -> tuple[bytes, ClientInfo]:
    """The client's node key and ClientInfo from a ClientInfo payload; ProtocolError if bad."""
    if len(payload) < KEY_LEN + NONCE_LEN:
        raise ProtocolError("short ClientInfo frame")
    if len(payload) > frames.MAX_CLIENT_INFO_SIZE:
        raise ProtocolError("ClientInfo frame too large")
    client_key = payload[:KEY_LEN]
    try:
        plain = Box(server_private, PublicKey(client_key)).decrypt(payload[KEY_LEN:])
    except CryptoError:
        raise ProtocolError("cannot open ClientInfo box with the client's key") from None
    return client_key, ClientInfo.from_json(plain)


def server_info_frame(server_private: PrivateKey, client_key: bytes) -> bytes:
    sealed = Box(server_private, PublicKey(client_key)).encrypt(server_info_json())
    return frames.encode(FrameType.SERVER_INFO, bytes(sealed))


# -- client side (our own test/bench client and, later, mesh peers) -----------------------------


def client_info_frame(client_private: PrivateKey, server_key: bytes, info: ClientInfo) -> bytes:
    sealed = Box(client_private, PublicKey(server_key)).encrypt(info.to_json())
    return frames.encode(FrameType.CLIENT_INFO, bytes(client_private.public_key) + bytes(sealed))


def open_server_info(
    client_private: PrivateKey, server_key: bytes, payload: bytes
) -> dict[str, Any]:
    try:
        plain = Box(client_private, PublicKey(server_key)).decrypt(payload)
    except CryptoError:
        raise ProtocolError("cannot open ServerInfo box") from None
    info = json.loads(plain)
    if not isinstance(info, dict):
        raise ProtocolError("ServerInfo must be a JSON object")
    return info
