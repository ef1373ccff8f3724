"""A server process killed outright (SIGKILL, no shutdown) loses no acknowledged change, on
either storage backend: what the CLI reported done is there after the restart."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Backend
from tests.interop.realclients import MeshscaleProcess


def test_sigkill_loses_no_acknowledged_write(tmp_path: Path, backend: Backend) -> None:
    server = MeshscaleProcess(tmp_path, [backend.name], backend.yaml())
    server.start()
    try:
        for name in ("alice", "bob", "carol"):
            server.cli("users", "create", name)
        key = server.cli("preauthkeys", "create", "--user", "bob", "--reusable", "-o", "json")
        server.cli("users", "rename", "-i", "carol", "-r", "dave")
        assert server.proc is not None
        server.proc.kill()  # SIGKILL: no shutdown code runs
        server.proc.wait()
        server.start()
        users = server.cli("users", "list", "-o", "json")
        assert sorted(u["name"] for u in users) == ["alice", "bob", "dave"]
        keys = server.cli("preauthkeys", "list", "-o", "json")
        assert [(k["id"], k["reusable"]) for k in keys] == [(key["id"], True)]
    finally:
        server.stop()
