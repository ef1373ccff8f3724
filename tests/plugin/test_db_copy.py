"""``meshscale db copy``: SQLite -> PostgreSQL -> SQLite with a real installation's rows, each
checked; the copy is what a server on the new backend loads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshscale.bench.pgserver import PgServer
from meshscale.cli.main import main
from meshscale.contributions import pick
from meshscale.errors import MeshscaleError
from meshscale.pluginhost import PluginHost
from meshscale.server import Server
from meshscale.storage.base import Snapshot, Storage
from meshscale.storage.copy import check_table as check
from meshscale.storage.schema import NodeRow
from meshscale.testing import make_config
from tests.conftest import new_pg_database
from tests.plugin.simnodes import join

POLICY = json.dumps({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
                     "tagOwners": {"tag:web": ["alice@"]}})


def pg_url(database: dict[str, Any]) -> str:
    pg = database["postgres"]
    return f"postgres://{pg['user']}@/{pg['name']}?host={pg['host']}&port={pg['port']}"


def comparable(snap: Snapshot) -> Any:
    return (snap.users, snap.keys, [(n.id, n.machine_key, n.node_key, n.hostinfo, n.ipv4,
                                     n.ipv6, n.tags, n.created_at, n.last_seen, n.expiry,
                                     n.approved_routes) for n in snap.nodes], snap.policy,
            {name: row.value for name, row in snap.settings.items()})


async def test_copy_to_postgres_and_back(
    tmp_path: Path, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    config_file = tmp_path / "config.yaml"
    base = {"data_dir": str(data), "plugins": ["sqlite", "policy"],
            "policy": {"mode": "database"}}
    config_file.write_text(yaml.safe_dump(base))

    def server(database: dict[str, Any] | None = None) -> Server:
        host = PluginHost()
        plugins = ["sqlite", "postgres", "policy"]
        host.load(plugins)
        extra = {"database": database} if database else {}
        return Server(make_config(data, host, plugins=plugins, policy={"mode": "database"},
                                  **extra), host)

    # An installation with a bit of everything: users, keys, nodes, two stored policies.
    first = server()
    await first.start()
    assert first.state is not None and first.storage is not None
    alice = first.state.create_user("alice", display_name="Alice", email="a@example.com")
    first.state.create_user("bob")
    _, key = first.state.create_key(alice, reusable=True)
    _, tagged = first.state.create_key(alice, reusable=True, tags=["tag:web"])
    first.set_policy(POLICY, "test", persist=True)
    first.set_policy(POLICY.replace("*:*", "alice@:*"), "test", persist=True)
    assert first.dns is not None
    first.dns.set({"base_domain": "ts.example.com"})  # DNS set through the admin API
    nodes = [await join(first, key, "laptop", stream=False),
             await join(first, tagged, "web", stream=False)]
    before = first.storage.load()
    for node, _, _ in nodes:
        await node.conn.close()

    # With the server running, the copy is refused.
    database = new_pg_database(pg_server)
    code = await asyncio.to_thread(main, ["-c", str(config_file), "db", "copy", "--to",
                                          pg_url(database)])
    assert code == 1 and "the server is running" in capsys.readouterr().err
    await first.stop()
    before = await asyncio.to_thread(_load, data, None)

    assert main(["-c", str(config_file), "db", "copy", "--to", pg_url(database)]) == 0
    out = capsys.readouterr().out
    assert ("2 users, 2 pre_auth_keys, 2 nodes, 2 policies, 3 id_counters, 0 meshscale_api_keys, "
            "1 meshscale_settings; every row checked"
            in out)

    # A server on PostgreSQL loads exactly what SQLite held, and keeps writing (the serial of
    # the policies table was moved past the copied ids).
    on_pg = server(database)
    await on_pg.start()
    assert on_pg.storage is not None
    assert comparable(on_pg.storage.load()) == comparable(before)
    on_pg.set_policy(POLICY, "test", persist=True)
    await on_pg.stop()

    # The check would notice a difference: one column of one row changed in the copy.
    import psycopg

    pg = database["postgres"]
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["name"],
                         autocommit=True) as conn:
        conn.execute("UPDATE nodes SET hostname = 'tampered' WHERE id = 2")
    sqlite_side, pg_side = _open(data, None), _open(data, database)
    try:
        with pytest.raises(MeshscaleError, match="nodes row 2 column hostname differs"):
            check(sqlite_side.db, pg_side.db, NodeRow)  # type: ignore[attr-defined]
    finally:
        sqlite_side.close()
        pg_side.close()
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["name"],
                         autocommit=True) as conn:
        conn.execute("UPDATE nodes SET hostname = 'web' WHERE id = 2")

    # A second copy into the same (now full) database is refused and changes nothing.
    assert main(["-c", str(config_file), "db", "copy", "--to", pg_url(database)]) == 1
    assert "not empty" in capsys.readouterr().err

    # And back: PostgreSQL -> a new SQLite file, from a config that points at PostgreSQL.
    config_file.write_text(yaml.safe_dump({**base, "plugins": ["postgres", "policy"],
                                           "database": database}))
    back = tmp_path / "back.sqlite"
    assert main(["-c", str(config_file), "db", "copy", "--to", f"sqlite://{back}"]) == 0
    assert "3 policies" in capsys.readouterr().out
    after = await asyncio.to_thread(_load, data, {"type": "sqlite",
                                                  "sqlite": {"path": str(back)}})
    assert comparable(after)[:3] == comparable(before)[:3]
    assert after.policy == POLICY


def _open(data: Path, database: dict[str, Any] | None) -> Storage:
    host = PluginHost()
    host.load(["sqlite", "postgres"])
    extra = {"database": database} if database else {}
    cfg = make_config(data, host, **extra)
    return pick(host.hooks.storage_backends(), cfg.database.type, "database.type",
                "backend").open(cfg)


def _load(data: Path, database: dict[str, Any] | None) -> Snapshot:
    storage = _open(data, database)
    try:
        return storage.load()
    finally:
        storage.close()


def test_bad_target_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"data_dir: {tmp_path / 'data'}\n")
    for url, says in [("mysql://x/y", "unsupported database URL"),
                      ("postgres://host:5432/", "no database name"),
                      ("sqlite://", "no path")]:
        assert main(["-c", str(config_file), "db", "copy", "--to", url]) == 1
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
