"""ClientInfo/ServerInfo NaCl boxes and the server key file (protocol.md §8.4)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from nacl.public import Box, PrivateKey, PublicKey

from meshscale.errors import ConfigError, ProtocolError
from meshscale.plugins.derp import frames, handshake, keys
from meshscale.plugins.derp.frames import FrameDecoder, FrameType
from meshscale.plugins.derp.handshake import ClientInfo


def test_client_info_roundtrip_through_the_frame() -> None:
    server, client = PrivateKey.generate(), PrivateKey.generate()
    frame = handshake.client_info_frame(
        client, bytes(server.public_key), ClientInfo(can_ack_pings=True)
    )
    (got,) = FrameDecoder().feed(frame)
    assert got.type == FrameType.CLIENT_INFO
    # 32-byte key, 24-byte nonce, 16-byte MAC, then the JSON.
    body = b'{"version":2,"CanAckPings":true}'
    assert len(got.payload) == 32 + 24 + 16 + len(body)
    key, info = handshake.open_client_info(server, got.payload)
    assert key == bytes(client.public_key)
    assert info == ClientInfo(version=2, can_ack_pings=True)


def test_client_info_box_is_go_box_seal_layout() -> None:
    # PyNaCl's Box.encrypt = nonce ‖ MAC ‖ ciphertext; Go's box.Seal with the nonce prepended
    # is the same, so a box we build by hand with a fixed nonce must open.
    server, client = PrivateKey.generate(), PrivateKey.generate()
    nonce = bytes(range(24))
    sealed = Box(client, PublicKey(bytes(server.public_key))).encrypt(b'{"version":2}', nonce)
    assert bytes(sealed)[:24] == nonce
    _key, info = handshake.open_client_info(server, bytes(client.public_key) + bytes(sealed))
    assert info.version == 2 and not info.can_ack_pings


def test_client_info_json_is_read_case_insensitively() -> None:
    info = ClientInfo.from_json(b'{"Version":2,"MeshKey":"ab","canackpings":true,"isprober":true}')
    assert info == ClientInfo(version=2, mesh_key="ab", can_ack_pings=True, is_prober=True)
    assert ClientInfo(mesh_key="cd").to_json() == (
        b'{"version":2,"CanAckPings":false,"meshKey":"cd"}'
    )


@pytest.mark.parametrize("payload", [b"", bytes(55), bytes(32) + bytes(40)])
def test_bad_client_info_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        handshake.open_client_info(PrivateKey.generate(), payload)


def test_client_info_sealed_to_another_server_is_refused() -> None:
    client = PrivateKey.generate()
    frame = handshake.client_info_frame(client, bytes(PrivateKey.generate().public_key),
                                        ClientInfo())
    with pytest.raises(ProtocolError, match="cannot open"):
        handshake.open_client_info(PrivateKey.generate(), frame[5:])


def test_client_info_not_json() -> None:
    server, client = PrivateKey.generate(), PrivateKey.generate()
    sealed = Box(client, server.public_key).encrypt(b"\xff not json")
    with pytest.raises(ProtocolError, match="JSON"):
        handshake.open_client_info(server, bytes(client.public_key) + bytes(sealed))


def test_server_info_opens_for_the_client() -> None:
    server, client = PrivateKey.generate(), PrivateKey.generate()
    frame = handshake.server_info_frame(server, bytes(client.public_key))
    assert frame[0] == FrameType.SERVER_INFO
    assert int.from_bytes(frame[1:5], "big") == 24 + 16 + len(b'{"version":2}')
    info = handshake.open_server_info(client, bytes(server.public_key), frame[5:])
    assert info == {"version": 2}
    assert handshake.server_key_frame(server) == frames.server_key(bytes(server.public_key))


def test_server_key_file_created_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "derp.key"
    first = keys.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text == f"privkey:{bytes(first).hex()}\n"
    assert bytes(keys.load_or_create_private_key(path)) == bytes(first)


def test_server_key_file_garbage_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "derp.key"
    path.write_text("nodekey:" + "00" * 32)
    with pytest.raises(ConfigError, match="private_key_path"):
        keys.load_or_create_private_key(path)


def test_node_and_mesh_keys() -> None:
    raw = bytes(range(32))
    assert keys.parse_node_key(keys.node_key_text(raw)) == raw
    assert keys.parse_node_key("nodekey:" + raw.hex().upper()) == raw
    assert keys.parse_node_key("mkey:" + raw.hex()) is None
    assert keys.parse_node_key("nodekey:abc") is None
    assert keys.parse_mesh_key("") is None
    assert keys.parse_mesh_key("ab" * 32) == b"\xab" * 32
    with pytest.raises(ConfigError, match="mesh_key"):
        keys.parse_mesh_key("xyz")
    json.dumps(keys.node_key_text(raw))
