"""``meshscale serve`` refuses what it cannot do with one line and a non-zero exit, and leaves
everything on disk as it was: the data directory of a running server, its socket, its database.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from meshscale import __version__
from meshscale.config import Config
from meshscale.ports import free_port
from tests.cli.serverproc import Serve, meshscale, snapshot, write_config
from tests.tlsca import TestCA


@pytest.fixture(scope="module")
def used_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory a server has run in and stopped: keys, database, DERP files."""
    work = tmp_path_factory.mktemp("used")
    config = write_config(work)
    server = Serve(config)
    assert meshscale("-c", str(config), "users", "create", "alice").returncode == 0
    assert server.stop()[0] == 0
    return work / "data"


@pytest.fixture
def data_copy(used_data: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(used_data, target)
    return target


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(write_config(_dir(tmp_path / "first")))
    yield server
    server.stop()


def only_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_banner_says_where_it_runs_how_to_stop_and_what_next(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    url = yaml.safe_load(config.read_text())["server_url"]
    port = url.rpartition(":")[2]
    server = Serve(config)
    data = tmp_path / "data"
    assert server.banner == [
        f"meshscale {__version__} is running",
        f"  control URL:   {url}   (clients: tailscale up --login-server {url})",
        f"  listening on:  127.0.0.1:{port}",
        f"  data dir:      {data}",
        f"  admin socket:  {data / 'meshscale.sock'}",
        f"  plugins:       {', '.join(Config().plugins)}",
        f"Stop it with Ctrl-C (or SIGTERM). Next, in another terminal: meshscale -c {config} "
        "users create NAME",
    ]
    rc, log = server.stop()
    assert rc == 0, log
    assert not (data / "meshscale.sock").exists()
    assert (data / "meshscale.lock").read_bytes() == b""  # no pid: nobody runs here


def test_a_second_server_on_the_same_data_dir_is_refused(running: Serve, tmp_path: Path) -> None:
    first = yaml.safe_load(running.config.read_text())
    data = Path(first["data_dir"])
    before = snapshot(data)
    # Another port, so only the data directory is shared.
    second = write_config(_dir(tmp_path / "second"), data_dir=str(data))
    result = meshscale("-c", str(second), "serve")
    assert result.returncode == 1
    assert only_line(result) == (
        f"meshscale: refusing to start: the data directory {data} is in use by another "
        f"meshscale server (pid {running.proc.pid}); stop it first, or give this one its own "
        "data_dir")
    assert snapshot(data) == before  # the socket (same inode), database, keys, lock: as they were
    users = meshscale("-c", str(running.config), "users", "list", "-o", "json")
    assert users.returncode == 0, users.stderr  # the first server still answers


def test_a_second_server_on_the_same_admin_socket_is_refused(running: Serve,
                                                             tmp_path: Path) -> None:
    first = yaml.safe_load(running.config.read_text())
    sock = Path(first["data_dir"]) / "meshscale.sock"
    before = snapshot(Path(first["data_dir"]))
    second = write_config(_dir(tmp_path / "second"), unix_socket=str(sock))
    result = meshscale("-c", str(second), "serve")
    assert result.returncode == 1
    assert only_line(result) == (
        f"meshscale: refusing to start: the admin socket {sock} belongs to another running "
        "server; stop it, or set unix_socket to another path")
    assert snapshot(Path(first["data_dir"])) == before
    assert meshscale("-c", str(running.config), "users", "list").returncode == 0


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_port_in_use_is_refused(data_copy: Path, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(tmp_path, listen_addr=f"127.0.0.1:{port}")
        before = snapshot(data_copy)
        result = meshscale("-c", str(config), "serve")
    assert result.returncode == 1
    assert only_line(result) == (
        f"meshscale: refusing to start: listen_addr 127.0.0.1:{port} is already in use by "
        "another program; stop it or choose another port with listen_addr")
    assert snapshot(data_copy) == before


def test_a_read_only_data_dir_is_refused(data_copy: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = snapshot(data_copy)
    cmd = [sys.executable, "-m", "meshscale.cli.main", "-c", str(config), "serve"]
    if os.geteuid() == 0:
        # Permission bits do not stop root: make the directory a read-only mount, as a
        # read-only file system would, in a mount namespace of this command only.
        script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"')
        cmd = ["unshare", "-rm", "sh", "-c", script, str(data_copy), *cmd]
        reason = "Read-only file system"
    else:
        data_copy.chmod(0o500)
        reason = "Permission denied"
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        data_copy.chmod(0o700)
    assert result.returncode == 1
    assert only_line(result) == (
        f"meshscale: refusing to start: the data directory {data_copy} is not writable "
        f"({reason}); fix its permissions or set data_dir to a writable directory")
    assert snapshot(data_copy) == before


def test_a_missing_tls_file_is_refused(data_copy: Path, tmp_path: Path) -> None:
    cert = tmp_path / "missing-cert.pem"
    config = write_config(tmp_path, tls_cert_path=str(cert), tls_key_path=str(cert))
    before = snapshot(data_copy)
    result = meshscale("-c", str(config), "serve")
    assert result.returncode == 1
    assert only_line(result) == (
        f"meshscale: tls_cert_path: cannot read {cert}: No such file or directory")
    assert snapshot(data_copy) == before


@pytest.mark.parametrize("problem", ["mismatch", "expired"])
def test_a_tls_pair_that_cannot_be_served_is_refused(data_copy: Path, tmp_path: Path,
                                                     problem: str) -> None:
    ca = TestCA(tmp_path / "ca")
    if problem == "mismatch":
        cert, key = ca.issue("a", "localhost").cert, ca.issue("b", "localhost", stem="b").key
        want = (f"meshscale: tls_key_path {key} is not the key of the certificate in "
                f"tls_cert_path {cert}; give the matching pair")
    else:
        old = ca.issue("old", "localhost", days=-1, start_days=-3)
        cert, key = old.cert, old.key
        want = f"meshscale: tls_cert_path {cert}: the certificate expired on "
    config = write_config(tmp_path, tls_cert_path=str(cert), tls_key_path=str(key))
    before = snapshot(data_copy)
    result = meshscale("-c", str(config), "serve")
    assert result.returncode == 1
    assert only_line(result).startswith(want)
    assert snapshot(data_copy) == before


def test_a_plugin_whose_module_is_missing_names_the_install_command(data_copy: Path,
                                                                     tmp_path: Path) -> None:
    # The import fails as it does where prometheus_client is not installed. (The packaging
    # test covers the real case: an environment without the extra.)
    config = write_config(tmp_path, plugins=["sqlite", "policy", "metrics"],
                          metrics_listen_addr=f"127.0.0.1:{free_port()}")
    before = snapshot(data_copy)
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from meshscale.cli.main import main; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code, "-c", str(config), "serve"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert only_line(result) == (
        "meshscale: plugin 'metrics' needs prometheus-client, which is not installed: "
        "pip install 'meshscale[metrics]'")
    assert snapshot(data_copy) == before


def test_a_closed_pipe_is_one_line_not_a_traceback(running: Serve) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `| head -1` does once it has its line
    try:
        result = subprocess.run(
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(running.config),
             "users", "list"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == (
        "meshscale: output closed before it was all written (broken pipe)\n")


def test_an_unavailable_oidc_issuer_is_one_line(data_copy: Path, tmp_path: Path) -> None:
    """oidc.only_start_if_oidc_is_available (true, as in headscale): the issuer's discovery is
    fetched at start-up; when it fails the server does not start."""
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(tmp_path, plugins=["sqlite", "policy", "oidc"],
                          oidc={"issuer": issuer, "client_id": "meshscale",
                                "client_secret": "s"})
    result = meshscale("-c", str(config), "serve")
    assert result.returncode == 1
    line = only_line(result)
    assert line.startswith(f"meshscale: plugin 'oidc': refusing to start: the OIDC issuer "
                           f"{issuer} is not available: "), line
    assert line.endswith("cannot be reached (All connection attempts failed). Fix oidc.issuer "
                         "(or the provider), or set oidc.only_start_if_oidc_is_available: false "
                         "to start without OIDC login"), line


@pytest.mark.parametrize(("key", "kind"), [("stun_listen_addr", socket.SOCK_DGRAM),
                                           ("tls_listen_addr", socket.SOCK_STREAM)])
def test_a_derp_port_in_use_is_refused_before_anything_is_opened(
        data_copy: Path, tmp_path: Path, key: str, kind: int) -> None:
    """The STUN (UDP) and DERP TLS ports are checked with the main port: before the database,
    keys or DERP files are touched, so the data directory stays byte for byte as it was."""
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        derp = {"server": {"stun_listen_addr": "127.0.0.1:0", key: f"127.0.0.1:{port}"}}
        config = write_config(tmp_path, data_dir=str(data_copy), derp=derp)
        before = snapshot(data_copy)
        result = meshscale("-c", str(config), "serve")
    assert result.returncode == 1
    assert only_line(result) == (
        f"meshscale: refusing to start: derp.server.{key} 127.0.0.1:{port} is already in use "
        f"by another program; stop it or choose another port with derp.server.{key}")
    assert snapshot(data_copy) == before
