"""PostgreSQL-only behaviour: headscale's keys, and a database that goes away under a running
server (refused writes with a clear error, recovery, no acknowledged write lost)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshscale.bench.pgserver import PgServer
from meshscale.cli.client import AdminClient
from meshscale.configload import build_config
from meshscale.errors import ConfigError, MeshscaleError, StorageError
from meshscale.plugins.postgres import connect_params, open_postgres
from meshscale.server import Server
from meshscale.simclient import SimNode
from tests.cli.serverproc import Serve, meshscale, write_config
from tests.conftest import new_pg_database
from tests.plugin.simnodes import join


def test_headscale_postgres_keys() -> None:
    cfg = build_config({"database": {"type": "postgres", "postgres": {
        "host": "/run/postgresql", "port": None, "name": "hs", "user": "hs", "pass": "s3cret",
        "ssl": "verify-full", "max_open_conns": 5, "max_idle_conns": 0,
        "conn_max_idle_time_secs": 60}}})
    pg = cfg.database.postgres
    assert (pg.password, pg.max_idle_conns, pg.conn_max_idle_time_secs) == ("s3cret", 0, 60)
    params = connect_params(pg)
    assert params["host"] == "/run/postgresql" and "port" not in params
    assert params["password"] == "s3cret" and params["sslmode"] == "verify-full"
    assert "keepalives" not in params  # a unix socket has no TCP to keep alive

    tcp = connect_params(build_config({"database": {"postgres": {
        "host": "db.example", "port": 5433, "ssl": True}}}).database.postgres)
    assert (tcp["port"], tcp["sslmode"], tcp["keepalives"]) == (5433, "require", 1)
    assert connect_params(build_config({"database": {"postgres": {"ssl": "false"}}})
                          .database.postgres)["sslmode"] == "disable"

    with pytest.raises(ConfigError, match=r"database\.postgres\.ssl"):
        build_config({"database": {"postgres": {"ssl": "sometimes"}}})
    with pytest.raises(ConfigError, match=r"database\.postgres\.name.*empty"):
        build_config({"database": {"type": "postgres", "postgres": {"name": ""}}})


def test_unreachable_database_is_one_clear_line(pg_server: PgServer) -> None:
    cfg = build_config({"database": {"type": "postgres", "postgres": {
        "host": pg_server.socket_dir, "port": pg_server.port + 1, "name": "x",
        "pass": "hunter2"}}})
    with pytest.raises(StorageError) as info:
        open_postgres(cfg)
    text = str(info.value)
    assert text.startswith("cannot connect to the PostgreSQL database 'x' at ")
    assert "\n" not in text and "hunter2" not in text


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL of this test's own: it is killed and restarted."""
    pg = PgServer()
    pg.start()
    yield pg
    pg.close()


async def test_killing_postgres_mid_write(
    own_pg: PgServer, meshscale_server_factory: Callable[..., Any]
) -> None:
    database = new_pg_database(own_pg, tcp=True)
    server: Server = await meshscale_server_factory(plugins=["postgres"], database=database)
    state, storage = server.state, server.storage
    assert state is not None and storage is not None
    alice = state.create_user("alice")
    _, key = state.create_key(alice, reusable=True)
    web, _, _ = await join(server, key, "web", stream=False)

    # A restart between two writes is invisible: the lost connection is replaced at once.
    own_pg.stop()
    own_pg.start()
    state.create_user("after-restart")
    # The one-server lock went with the old session; the write that found the database back
    # took it again.
    with pytest.raises(StorageError, match="in use by another meshscale server"):
        await asyncio.to_thread(open_postgres, build_config({"database": database}))

    # Kill it (SIGQUIT: an immediate shutdown, no checkpoint) while writes are under way.
    acked: list[str] = []
    refused: list[tuple[str, str]] = []
    killer = threading.Timer(0.3, own_pg.stop, kwargs={"immediate": True})
    killer.start()
    deadline = time.monotonic() + 20
    i = 0
    while not refused or len(refused) < 3:
        assert time.monotonic() < deadline, "writes never failed with the database gone"
        name = f"u{i}"
        i += 1
        try:
            state.create_user(name)
            acked.append(name)
        except StorageError as exc:
            refused.append((name, str(exc)))
        await asyncio.sleep(0.005)
    killer.join()
    assert acked, "no write succeeded before the kill"
    for _, message in refused:
        assert "cannot persist the change" in message and "unreachable" in message
        assert "nothing was changed" in message and "\n" not in message
    in_memory = {u.name for u in state.users.values()}
    assert in_memory == {"alice", "after-restart", *acked}

    # The main listener's /health says so (load balancers, orchestrators)...
    health = await http_get(server.main_port, "/health")
    assert health.startswith(b"HTTP/1.1 503") and b"database is unreachable" in health
    # ...an admin sees the reason (HTTP 503 -> one line from the CLI's client)...
    admin = AdminClient(str(server.admin_socket_path))
    with pytest.raises(MeshscaleError, match=r"cannot persist the change.*unreachable"):
        await asyncio.to_thread(admin.call, "POST", "/v1/users", {"name": "carol"})
    # ...and so does a node trying to register: it is not registered.
    node = SimNode("refused")
    await node.conn.connect("127.0.0.1", server.main_port)
    resp = await node.register(key)
    assert resp.get("MachineAuthorized") is not True
    assert "cannot store the registration" in resp["Error"]
    assert not any(n.hostname == "refused" for n in state.nodes.values())
    await node.conn.close()

    # A node's new Hostinfo is refused too (503; the client sends it again) and not applied.
    web.hostinfo["OS"] = "plan9"
    status, _ = await web.conn.request("/machine/map", web.map_body(False))
    assert status == 503
    assert all(n.hostinfo.get("OS") != "plan9" for n in state.nodes.values())

    # The database comes back: writes resume by themselves.
    own_pg.start()
    deadline = time.monotonic() + 20
    while not getattr(storage, "available", True):
        assert time.monotonic() < deadline, "the server did not notice the database is back"
        await asyncio.sleep(0.05)
    await asyncio.to_thread(admin.call, "POST", "/v1/users", {"name": "carol"})
    assert (await http_get(server.main_port, "/health")).startswith(b"HTTP/1.1 200")
    with pytest.raises(StorageError, match="in use by another meshscale server"):
        await asyncio.to_thread(open_postgres, build_config({"database": database}))
    node = SimNode("late")
    await node.conn.connect("127.0.0.1", server.main_port)
    assert (await node.register(key)).get("MachineAuthorized") is True
    await node.conn.close()
    status, _ = await web.conn.request("/machine/map", web.map_body(False))
    assert status == 200
    deadline = time.monotonic() + 10  # the update rate limit may hold it back a moment
    while not any(n.hostinfo.get("OS") == "plan9" for n in state.nodes.values()):
        assert time.monotonic() < deadline, "the Hostinfo sent again was not applied"
        await asyncio.sleep(0.05)
    await web.conn.close()

    # Every acknowledged write is in the database (read by a new server on it).
    await server.stop()
    again: Server = await meshscale_server_factory(plugins=["postgres"], database=database)
    assert again.state is not None
    stored = {u.name for u in again.state.users.values()}
    assert {"alice", "after-restart", "carol", *acked} <= stored
    # A refused write is not there, except perhaps the one whose commit raced the kill (its
    # reply was lost); later writes reuse its id, so it is overwritten, not duplicated.
    assert not stored & {name for name, _ in refused[1:]}
    assert sorted(n.hostname for n in again.state.nodes.values()) == ["late", "web"]


def test_a_headscale_database_is_refused_and_left_alone(pg_server: PgServer) -> None:
    import psycopg

    database = new_pg_database(pg_server)
    pg = database["postgres"]
    conninfo = {"host": pg["host"], "port": pg["port"], "user": pg["user"], "dbname": pg["name"]}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE nodes (id integer PRIMARY KEY, host_info text)")
        conn.execute("CREATE TABLE users (id integer PRIMARY KEY, name text)")
    with pytest.raises(StorageError, match="is a headscale database"):
        open_postgres(build_config({"database": database}))
    with psycopg.connect(**conninfo) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                              "ORDER BY tablename").fetchall()
    assert tables == [("nodes",), ("users",)]


def test_idle_connection_settings(pg_server: PgServer) -> None:
    from datetime import UTC, datetime

    from meshscale.state.models import User
    from meshscale.storage.base import PutUser

    def user(i: int) -> PutUser:
        return PutUser(User(id=i, name=f"u{i}", created_at=datetime.now(UTC)))

    database = new_pg_database(pg_server)
    database["postgres"].update(max_idle_conns=0)
    storage: Any = open_postgres(build_config({"database": database}))
    try:
        storage.apply([user(1)])
        assert storage.db.is_closed()  # no idle connection kept
        storage.apply([user(2)])  # reopened for the write
        assert [u.name for u in storage.load().users] == ["u1", "u2"]
    finally:
        storage.close()

    database["postgres"].update(max_idle_conns=10, conn_max_idle_time_secs=1)
    storage = open_postgres(build_config({"database": database}))
    try:
        storage.apply([user(3)])
        first = storage.db.connection()
        storage.apply([user(4)])
        assert storage.db.connection() is first  # used again while fresh
        time.sleep(1.1)
        storage.apply([user(5)])
        assert storage.db.connection() is not first  # idle too long: replaced
        assert len(storage.load().users) == 5
    finally:
        storage.close()


def test_one_storage_per_database(pg_server: PgServer) -> None:
    """A second opener of the same database is refused before it reads or migrates anything;
    another database of the same PostgreSQL is not affected; closing frees the database."""
    database = new_pg_database(pg_server)
    first = open_postgres(build_config({"database": database}))
    try:
        with pytest.raises(StorageError) as info:
            open_postgres(build_config({"database": database}))
        text = str(info.value)
        assert "\n" not in text
        assert text.startswith(f"the PostgreSQL database '{database['postgres']['name']}' at ")
        assert "in use by another meshscale server (connected from a unix socket since " in text
        other = open_postgres(build_config({"database": new_pg_database(pg_server)}))
        other.close()
    finally:
        first.close()
    open_postgres(build_config({"database": database})).close()


def test_two_servers_on_one_database(pg_server: PgServer, tmp_path: Path) -> None:
    """``meshscale serve`` twice on one database (two data directories, as two machines would
    have): the second exits 1 with one line naming the database, and the first serves on."""
    database = new_pg_database(pg_server, tcp=True)
    first = Serve(write_config(_dir(tmp_path / "a"), database=database))
    try:
        second = write_config(_dir(tmp_path / "b"), database=database)
        result = meshscale("-c", str(second), "serve", timeout=60)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        name = database["postgres"]["name"]
        assert f"PostgreSQL database '{name}' at 127.0.0.1:" in lines[0]
        assert "in use by another meshscale server (connected from 127.0.0.1 since" in lines[0]
        assert meshscale("-c", str(first.config), "users", "create", "alice").returncode == 0
    finally:
        rc, log = first.stop()
    assert rc == 0, log
    # The first one gone, its lock went with it: the second starts.
    again = Serve(second)
    users = meshscale("-c", str(second), "users", "list", "-o", "json")
    assert again.stop()[0] == 0
    assert '"alice"' in users.stdout


def _dir(path: Path) -> Path:
    path.mkdir()
    return path
