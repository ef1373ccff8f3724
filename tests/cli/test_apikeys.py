"""``meshscale apikeys``: a key is printed once, listed by prefix only, expired, deleted, kept
across a restart, and never written to the log. A real ``meshscale serve`` and its SQLite."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from tests.cli.serverproc import Serve, meshscale, write_config


def test_apikeys_lifecycle(tmp_path: Path) -> None:
    config = write_config(tmp_path, log={"level": "debug"})

    def cli(*args: str) -> str:
        result = meshscale("-c", str(config), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    server = Serve(config)
    try:
        key = cli("apikeys", "create", "--expiration", "90d")
        assert key.startswith("mskey-api-") and len(key) > 60
        prefix = key.removeprefix("mskey-api-").split("-")[0]
        second = json.loads(cli("apikeys", "create", "-e", "1h", "-o", "json"))
        listed = json.loads(cli("apikeys", "list", "-o", "json"))
        # listed masked, as headscale 0.29 lists its keys (hskey-api-<prefix>-***)
        masked = f"mskey-api-{prefix}-***"
        assert [k["prefix"] for k in listed] == [masked, second["prefix"]]
        assert second["prefix"] == second["key"][:len("mskey-api-") + 12] + "-***"
        assert key not in json.dumps(listed) and "key" not in listed[0]
        (row,) = [line for line in cli("apikeys", "list").splitlines() if masked in line]
        assert row.split("|")[1].strip() == masked  # the table's Prefix column
        expired = json.loads(cli("apikeys", "expire", "--prefix", prefix, "-o", "json"))
        assert expired["expiration"] is not None and expired["prefix"] == masked
        # the text a listing shows finds the key too, as the bare prefix and the ID do
        assert json.loads(cli("apikeys", "expire", "-p", masked, "-o", "json"))["id"] == 1
        cli("apikeys", "delete", "--prefix", second["prefix"])
        bad = meshscale("-c", str(config), "apikeys", "delete", "--prefix", "nosuchprefix")
        assert bad.returncode != 0 and "not found" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        rc, log = server.stop()
    assert rc == 0, log
    def secret(full: str) -> str:
        return full.removeprefix("mskey-api-")[13:]  # after the 12-character prefix and "-"

    assert len(secret(key)) == 64
    assert secret(key) not in log and secret(second["key"]) not in log

    db = Path(yaml.safe_load(config.read_text())["data_dir"]) / "db.sqlite"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT prefix, secret_hash FROM meshscale_api_keys").fetchall()
    conn.close()
    assert [r[0] for r in rows] == [prefix]  # the deleted one is gone; no secret stored
    assert secret(key).encode() not in rows[0][1]

    server = Serve(config)
    try:
        (kept,) = json.loads(cli("apikeys", "list", "-o", "json"))
        assert kept["prefix"] == masked and kept["expiration"] == expired["expiration"]
    finally:
        rc, log = server.stop()
    assert rc == 0, log
