"""The DERP server's key on disk, and the text forms of node keys.

The private key is stored like headscale and Go's ``key.NodePrivate`` text form
(``privkey:<64 hex>``), readable only by its owner, so the server keeps its DERP identity across
restarts and clients that cached the map keep working.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nacl.public import PrivateKey

from meshscale import files
from meshscale.errors import ConfigError

_PRIV = re.compile(r"^privkey:([0-9a-fA-F]{64})$")
_NODEKEY = re.compile(r"^nodekey:([0-9a-fA-F]{64})$")


def load_or_create_private_key(path: Path) -> PrivateKey:
    """Read the key at ``path``, or create it (mode 0600) if the file does not exist."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = PrivateKey.generate()
        files.private_dir(path.parent)
        # O_EXCL: two servers starting on one data dir must not overwrite each other's key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_private_key(path)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"privkey:{bytes(key).hex()}\n")
        return key
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("derp.server.private_key_path", f"cannot read {path}: {exc}") from None
    m = _PRIV.match(text)
    if not m:
        raise ConfigError(
            "derp.server.private_key_path", f"{path} does not hold a privkey:<64 hex> key"
        )
    return PrivateKey(bytes.fromhex(m.group(1)))


def parse_node_key(text: str) -> bytes | None:
    """Raw 32 bytes of ``nodekey:<hex>``, or None if the text is not a node key."""
    m = _NODEKEY.match(text.strip())
    return bytes.fromhex(m.group(1)) if m else None


def node_key_text(raw: bytes) -> str:
    return f"nodekey:{raw.hex()}"


def parse_mesh_key(text: str) -> bytes | None:
    """A mesh key is 32 bytes written as 64 hex digits; empty means meshing is off."""
    text = text.strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise ConfigError("derp.server.mesh_key", "must be 64 hex digits (32 random bytes)")
    return bytes.fromhex(text)
