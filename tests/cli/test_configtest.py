"""``meshscale configtest`` checks what ``serve`` checks before listening, reports every problem
in one run (one line each), exits non-zero, and changes nothing on disk."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshscale.cli.main import main
from meshscale.config import Config
from tests.cli.serverproc import snapshot

HEADSCALE = Path(__file__).parents[1] / "unit" / "data" / "headscale_schema.sql"


def configtest(tmp_path: Path, capsys: pytest.CaptureFixture[str], **settings: Any) -> tuple[
        int, list[str], list[str]]:
    config: dict[str, Any] = {"data_dir": str(tmp_path / "data"),
                              "derp": {"server": {"stun_listen_addr": "127.0.0.1:0"}}}
    config.update(settings)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    rc = main(["-c", str(path), "configtest"])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def summary(tmp_path: Path, count: int) -> str:
    return f"configtest: {count} problem(s) with {tmp_path / 'config.yaml'}"


def test_a_good_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = configtest(tmp_path, capsys)
    assert (rc, err) == (0, [])
    assert out == [f"config OK ({tmp_path / 'config.yaml'}); plugins: "
                   f"{', '.join(Config().plugins)}"]
    assert not (tmp_path / "data").exists()  # checked, not created


def test_a_missing_tls_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.write_text("")
    rc, _, err = configtest(tmp_path, capsys, tls_cert_path=str(cert), tls_key_path=str(key))
    assert rc == 1
    assert err == [f"meshscale: tls_cert_path: cannot read {cert}: No such file or directory",
                   summary(tmp_path, 1)]


def test_a_tls_pair_that_is_not_pem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    rc, _, err = configtest(tmp_path, capsys, tls_cert_path=str(cert), tls_key_path=str(key))
    assert rc == 1
    assert err == [f"meshscale: tls_cert_path {cert} holds no PEM certificate",
                   summary(tmp_path, 1)]


def test_a_missing_policy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.hujson"
    rc, _, err = configtest(tmp_path, capsys, policy={"path": str(policy)})
    assert rc == 1
    assert err == [f"meshscale: policy.path: cannot read {policy}: No such file or directory",
                   summary(tmp_path, 1)]


def test_an_invalid_policy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.hujson"
    policy.write_text('{"acls": [], "bogus": 1}')
    rc, _, err = configtest(tmp_path, capsys, policy={"path": str(policy)})
    assert rc == 1
    assert err == [f"meshscale: policy.path: {policy} is invalid: bogus: unknown field",
                   summary(tmp_path, 1)]


def test_a_plugin_that_is_not_installed(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = configtest(tmp_path, capsys, plugins=["sqlite", "derp", "nosuch"])
    assert rc == 1
    assert err[0].startswith("meshscale: plugin 'nosuch': not installed (installed plugins: ")
    assert err[1:] == [summary(tmp_path, 1)]


def test_a_plugin_whose_extra_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    rc, _, err = configtest(tmp_path, capsys, plugins=["sqlite", "derp", "metrics"])
    assert rc == 1
    assert err == ["meshscale: plugin 'metrics' needs prometheus-client, which is not "
                   "installed: pip install 'meshscale[metrics]'", summary(tmp_path, 1)]


def test_a_storage_backend_no_plugin_provides(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = configtest(tmp_path, capsys, database={"type": "postgres"},
                            plugins=["sqlite", "derp", "stun", "policy"])
    assert rc == 1
    assert err == ["meshscale: database.type: no storage backend 'postgres' is loaded; "
                   "available: sqlite, sqlite3", summary(tmp_path, 1)]


def test_a_headscale_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "headscale.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(HEADSCALE.read_text())
    conn.close()
    before = snapshot(tmp_path)
    rc, _, err = configtest(tmp_path, capsys, database={"sqlite": {"path": str(db)}})
    assert rc == 1
    assert err[0].startswith(f"meshscale: database {db} is a headscale database (tables: ")
    assert len(err) == 2
    after = snapshot(tmp_path)
    after.pop("config.yaml")
    assert after == before


def test_a_data_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = configtest(tmp_path, capsys, data_dir=str(blocker / "data"))
    assert rc == 1
    assert err == [f"meshscale: data_dir: {blocker} is not a directory", summary(tmp_path, 1)]


def test_a_read_only_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data)}))
    cmd = [sys.executable, "-m", "meshscale.cli.main", "-c", str(config), "configtest"]
    if os.geteuid() == 0:  # root ignores permission bits: a read-only mount, as in the serve test
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
        cmd = ["unshare", "-rm", "sh", "-c", script, str(data), *cmd]
        reason = "Read-only file system"
    else:
        data.chmod(0o500)
        reason = "Permission denied"
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        data.chmod(0o700)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"meshscale: data_dir: {data} is not writable ({reason}); fix its "
        "permissions or set data_dir to a writable directory",
        f"configtest: 1 problem(s) with {config}"]
    assert list(data.iterdir()) == []


def test_an_empty_derp_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = configtest(tmp_path, capsys, plugins=["sqlite", "policy"])
    assert rc == 1
    assert err == ["meshscale: derp: the DERP map would be empty and clients could not "
                   "connect; enable the embedded DERP (plugin derp, derp.server.enabled: true) "
                   "or list derp.paths or derp.urls", summary(tmp_path, 1)]


def test_every_problem_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, policy = tmp_path / "cert.pem", tmp_path / "policy.hujson"
    rc, _, err = configtest(tmp_path, capsys, plugins=["sqlite", "policy", "nosuch"],
                            tls_cert_path=str(cert), tls_key_path=str(cert),
                            policy={"path": str(policy)})
    assert rc == 1
    assert [line.split(":")[1].strip() for line in err[:-1]] == [
        "plugin 'nosuch'", "tls_cert_path", "policy.path", "derp"]
    assert err[-1] == summary(tmp_path, 4)


@pytest.mark.parametrize("backend_name", ["sqlite", "postgres"])
def test_a_policy_stored_in_the_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         backend_name: str, request: pytest.FixtureRequest
                                         ) -> None:
    """policy.mode database: the stored policy is checked, read without opening the storage
    (nothing changes; on PostgreSQL it is read while a server holds the database's lock)."""
    from meshscale.configload import build_config
    from meshscale.storage.base import PutPolicy
    from tests.conftest import new_pg_database

    if backend_name == "sqlite":
        database: dict[str, Any] = {"type": "sqlite"}
    else:
        database = new_pg_database(request.getfixturevalue("pg_server"))
    settings = {"database": database, "policy": {"mode": "database"}}
    config = build_config({"data_dir": str(tmp_path / "data"), **settings})
    if backend_name == "sqlite":
        from meshscale.plugins.sqlite import open_sqlite
        storage = open_sqlite(config)
    else:
        from meshscale.plugins.postgres import open_postgres
        storage = open_postgres(config)
    try:
        storage.apply([PutPolicy('{"acls": [], "bogus": 1}')])
        if backend_name == "sqlite":
            storage.close()  # a running server's SQLite is read as well; PostgreSQL stays held
        before = snapshot(tmp_path / "data")
        rc, _, err = configtest(tmp_path, capsys, **settings)
        assert rc == 1
        assert err == ["meshscale: policy.mode database: the policy stored in the database is "
                       "invalid: bogus: unknown field; replace it with 'meshscale policy set'",
                       summary(tmp_path, 1)]
        assert snapshot(tmp_path / "data") == before
        if backend_name == "sqlite":
            storage = open_sqlite(config)
        storage.apply([PutPolicy('{"acls": [{"action": "accept", "src": ["*"], '
                                 '"dst": ["*:*"]}]}')])
        if backend_name == "sqlite":
            storage.close()
        rc, _, err = configtest(tmp_path, capsys, **settings)
        assert (rc, err) == (0, [])
    finally:
        storage.close()
