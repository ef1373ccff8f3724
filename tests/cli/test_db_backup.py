"""``meshscale db backup FILE`` copies the database of a running server; the copy restores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli.serverproc import Serve, meshscale, write_config


def test_backup_while_serving_then_restore(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    config = write_config(tmp_path / "live")
    server = Serve(config)
    backup = tmp_path / "backup.sqlite"
    try:
        assert meshscale("-c", str(config), "users", "create", "alice").returncode == 0
        result = meshscale("-c", str(config), "db", "backup", str(backup))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(
            f"backed up {tmp_path / 'live' / 'data' / 'db.sqlite'} to {backup} (")
        again = meshscale("-c", str(config), "db", "backup", str(backup))
        before = backup.read_bytes()
        assert again.returncode == 1
        assert again.stderr == (
            f"meshscale: {backup} exists; name a new file (a backup never overwrites)\n")
        assert backup.read_bytes() == before
    finally:
        assert server.stop()[0] == 0

    # Restore: a new data directory whose database is the backup.
    (tmp_path / "restored" / "data").mkdir(parents=True)
    shutil.copy(backup, tmp_path / "restored" / "data" / "db.sqlite")
    restored = write_config(tmp_path / "restored")
    server = Serve(restored)
    try:
        users = meshscale("-c", str(restored), "users", "list", "-o", "json")
        assert [u["name"] for u in json.loads(users.stdout)] == ["alice"]
    finally:
        assert server.stop()[0] == 0
    assert list(tmp_path.glob(".backup.sqlite.partial-*")) == []
