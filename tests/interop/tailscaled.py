"""The real Tailscale daemon and CLI (tailscaled and tailscale) for interop tests.

Two releases: v1.102.5 for every test, and the oldest one meshscale accepts (v1.80.3) for a
few (``OLD_VERSION``; a test asks for both with ``@both_versions``). scripts/build-tailscale
builds each from its Go module, outside the test network namespace, into a cache folder keyed
by the version; the tests only run them. Each node is one tailscaled
with its own state dir, unix socket and UDP port, in userspace-networking mode (no TUN, no root,
no routes touched), driven with ``tailscale --socket=...`` exactly as a user drives it.

Like every client here it runs inside the private network namespace (tests/interop/conftest.py
refuses to start otherwise), with log uploads off.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from meshscale.ports import free_port
from tests.interop.realclients import stop_process, wait_for

VERSION = "v1.102.5"
# The oldest release meshscale accepts (capability version 113) that the Go module proxy serves
# and Go 1.26 builds; scripts/test builds it beside VERSION.
OLD_VERSION = "v1.80.3"
VERSIONS = (VERSION, OLD_VERSION)
BASE_DOMAIN = "meshscale.net"  # meshscale's dns.base_domain default
CACHE = Path(os.environ.get("MESHSCALE_INTEROP_WHEELHOUSE",
                            Path.home() / ".cache" / "meshscale-interop"))


def binaries(version: str = VERSION) -> tuple[Path, Path]:
    """(tailscaled, tailscale) as scripts/build-tailscale left them; the test fails otherwise."""
    folder = CACHE / f"tailscale-{version}"
    if version == VERSION:  # MESHSCALE_TAILSCALE_DIR moves the main release only
        folder = Path(os.environ.get("MESHSCALE_TAILSCALE_DIR", folder))
    daemon, cli = folder / "tailscaled", folder / "tailscale"
    if not (os.access(daemon, os.X_OK) and os.access(cli, os.X_OK)):
        build = ("" if version == VERSION
                 else f"MESHSCALE_TAILSCALE_VERSION={version} ")
        pytest.fail(
            f"the real Tailscale client {version} is not built in {folder}: run "
            f"`{build}bash scripts/build-tailscale` (outside the network namespace; "
            "`bash scripts/test` runs it first) and fix what it reports",
            pytrace=False,
        )
    return daemon, cli


both_versions = pytest.mark.parametrize("tailscale_version", VERSIONS, indirect=True)


class Tailscaled:
    """One node: a tailscaled process plus its CLI.

    ``env`` adds client environment knobs (e.g. ``TS_DEBUG_ALWAYS_USE_DERP``); ``http_proxy``
    makes tailscaled serve an outbound HTTP proxy on 127.0.0.1 whose connections go wherever the
    node's routes say (a subnet router, an exit node): the userspace-networking way to send a
    process's traffic through the tailnet.
    """

    def __init__(self, workdir: Path, name: str, env: dict[str, str] | None = None,
                 http_proxy: bool = False, version: str = VERSION) -> None:
        self.daemon, self.cli_binary = binaries(version)
        self.version = version
        self.name = name
        self.dir = workdir / f"ts-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # A unix socket path must fit in 108 bytes; pytest's tmp_path may not leave room.
        self.sockdir = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
        self.socket = self.sockdir / f"{name}.sock"
        self.port = free_port(udp=True)
        self.proxy_port = free_port() if http_proxy else 0
        self.log = self.dir / "tailscaled.log"
        self.env = {
            **os.environ,
            "HOME": str(self.dir),  # whatever it caches, it caches in the test's folder
            "TS_NO_LOGS_NO_SUPPORT": "true",  # never upload logs (nothing is reachable anyway)
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._death_pipe: int | None = None

    # -- process ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon (again, after ``stop``: it keeps its state dir, so its node)."""
        self.sockdir.mkdir(exist_ok=True)
        args = [
            str(self.daemon), "--tun=userspace-networking", "--no-logs-no-support",
            f"--statedir={self.dir / 'state'}", f"--socket={self.socket}", f"--port={self.port}",
        ]
        if self.proxy_port:
            args.append(f"--outbound-http-proxy-listen=127.0.0.1:{self.proxy_port}")
        # tailscaled exits when this pipe's write end closes, i.e. when pytest dies: no daemon
        # outlives a killed test run.
        read_end, self._death_pipe = os.pipe()
        try:
            self.proc = subprocess.Popen(
                args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=self.dir,
                env={**self.env, "TS_PARENT_DEATH_FD": str(read_end)}, pass_fds=(read_end,),
            )
        finally:
            os.close(read_end)
        wait_for(self._answers, 20, f"tailscaled {self.name} to answer on its socket")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"tailscaled {self.name} exited: {self.log_tail()}")
        return self.cli("status", "--json", check=False).returncode == 0

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self._death_pipe is not None:
            os.close(self._death_pipe)
            self._death_pipe = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_bytes().decode(errors="replace") if self.log.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    # -- the CLI --------------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``tailscale --socket=... ARGS``; with ``check``, a failure shows the daemon's log."""
        out = subprocess.run(
            [str(self.cli_binary), f"--socket={self.socket}", *args],
            capture_output=True, text=True, check=False, timeout=timeout, env=self.env,
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"tailscale {' '.join(args)} on {self.name} exited {out.returncode}: "
                f"{(out.stderr or out.stdout).strip()}\n--- tailscaled {self.name} log tail:\n"
                f"{self.log_tail()}"
            )
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args).stdout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.json("status", "--json")
        return result

    def up(self, login_server: str, authkey: str, *flags: str) -> None:
        """``tailscale up`` with a pre-auth key; returns once the node is Running."""
        self.cli("up", f"--login-server={login_server}", f"--authkey={authkey}",
                 f"--hostname={self.name}", "--timeout=60s", *flags, timeout=90)

    def peers(self) -> dict[str, dict[str, Any]]:
        """The peers in ``tailscale status --json``, by host name."""
        return {p["HostName"]: p for p in (self.status().get("Peer") or {}).values()}


def start_all(nodes: Iterable[Tailscaled]) -> None:
    """Start several daemons at once (each waits for its own socket)."""
    nodes = list(nodes)
    with ThreadPoolExecutor(len(nodes) or 1) as pool:
        list(pool.map(Tailscaled.start, nodes))


def up_all(nodes: Iterable[Tailscaled], login_server: str, authkey: str, *flags: str) -> None:
    """``tailscale up`` on several nodes at once: a join costs a few seconds of waiting each."""
    nodes = list(nodes)
    with ThreadPoolExecutor(len(nodes) or 1) as pool:
        list(pool.map(lambda n: n.up(login_server, authkey, *flags), nodes))


# -- what the tests do through a node ------------------------------------------------------


def dns_query(node: Tailscaled, name: str, qtype: str = "A") -> dict[str, Any]:
    """``tailscale dns query --json``: asks the client's own resolver (100.100.100.100)."""
    result: dict[str, Any] = node.json("dns", "query", "--json", name, qtype)
    return result


def answers(result: dict[str, Any]) -> list[str]:
    return sorted(a["Body"] for a in result.get("Answers") or [])


@contextmanager
def http_service(host: str, body: bytes) -> Iterator[int]:
    """An HTTP server on ``host`` (an address of this namespace) answering ``body``; its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def get_via_proxy(node: Tailscaled, url: str, timeout: float = 20) -> bytes:
    """GET ``url`` through the node's outbound HTTP proxy: the connection is dialed by
    tailscaled, which sends it wherever the node's routes say (subnet router, exit node)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.proxy_port, timeout=timeout)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, (resp.status, data[:200])
        return data
    finally:
        conn.close()


def received_from(node: Tailscaled) -> dict[str, int]:
    """Bytes the node received over WireGuard from each peer (status --json's RxBytes)."""
    return {name: int(p["RxBytes"]) for name, p in node.peers().items()}
