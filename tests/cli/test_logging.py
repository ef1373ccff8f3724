"""The node lifecycle in the log: one INFO line per registration, route approval, expiry,
logout and deletion, naming node and user and never a key; ``log.format: json`` writes one
valid JSON object per line. A real ``meshscale serve`` and simulated nodes speaking the real
protocol."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from meshscale.simclient import SimNode
from tests.cli.serverproc import Serve, meshscale, write_config


async def test_lifecycle_lines_in_json(tmp_path: Path) -> None:
    config = write_config(tmp_path, log={"format": "json", "level": "info"})
    port = int(yaml.safe_load(config.read_text())["listen_addr"].rpartition(":")[2])
    server = Serve(config)

    def cli(*args: str) -> str:
        result = meshscale("-c", str(config), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    try:
        cli("users", "create", "alice")
        key = cli("preauthkeys", "create", "--user", "alice", "--reusable")

        async def join(name: str) -> SimNode:
            node = SimNode(name)
            await node.conn.connect("127.0.0.1", port)
            assert (await node.register(key)).get("MachineAuthorized") is True
            return node

        a = await join("a")
        cli("nodes", "approve-routes", "-i", "1", "-r", "10.0.0.0/24")
        soon = datetime.now(UTC) + timedelta(seconds=1)
        await a.register(None, Expiry=soon.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        b = await join("b")
        await b.register(None, Expiry="1970-01-01T00:02:03Z")  # logout
        await join("c")
        cli("nodes", "expire", "-i", "3")
        cli("nodes", "delete", "--force", "-i", "3")
        await asyncio.sleep(2)  # a's key expires on the server's schedule
    finally:
        rc, log = server.stop()
    assert rc == 0, log

    records = [json.loads(line) for line in log.splitlines() if line.strip()]  # all valid JSON
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    audit = [r["message"] for r in records if r["logger"] == "meshscale.audit"]
    assert all(r["level"] == "INFO" for r in records if r["logger"] == "meshscale.audit")
    # a's key expires on a timer, among the others: its place in the order is not fixed.
    audit.remove("node 1 a (user alice, 100.64.0.1): key expired")
    assert audit == [
        "node 1 a (user alice, 100.64.0.1): registered",
        "node 1 a (user alice, 100.64.0.1): approved routes set to 10.0.0.0/24",
        "node 2 b (user alice, 100.64.0.2): registered",
        "node 2 b (user alice, 100.64.0.2): logged out",
        "node 3 c (user alice, 100.64.0.3): registered",
        "node 3 c (user alice, 100.64.0.3): expired by an admin",
        "node 3 c (user alice, 100.64.0.3): deleted by an admin",
    ]
    secret = key.rpartition("-")[2]
    assert secret not in log and "nodekey:" not in log and "privkey:" not in log
