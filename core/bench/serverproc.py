"""The server under test: ``meshscale serve`` in its own process, measured through /proc."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from meshscale.cli.client import AdminClient
from meshscale.ports import free_port

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    user, system, _ = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float, int]:
    """User CPU, system CPU (seconds) and minor page faults of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK, int(fields[7])


def rss_bytes(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * _PAGE


def peak_rss_bytes(pid: int) -> int:
    """The highest RSS the process had so far (VmHWM in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (its connection workers), from every thread's list."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return sorted(out)


class ServerProcess:
    def __init__(self, plugins: list[str], extra: dict[str, Any] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="meshscale-bench-"))
        self.port = free_port()
        config: dict[str, Any] = {
            "data_dir": str(self.dir / "data"),
            "listen_addr": f"127.0.0.1:{self.port}",
            "server_url": f"http://127.0.0.1:{self.port}",
            "plugins": plugins,
            "log": {"level": "warn"},
            "metrics_listen_addr": "",
        }
        config.update(extra or {})
        self.config = self.dir / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = AdminClient(str(self.dir / "data" / "meshscale.sock"), timeout=120)

    def start(self, timeout: float = 30.0) -> None:
        self.log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "meshscale.cli.main", "-c", str(self.config), "serve"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.dir / 'server.log').read_text()}")
            try:
                self.admin.call("GET", "/v1/health")
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError("server did not start in time")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float, int]:
        return cpu_split(self.pid)

    def worker_cpu(self) -> dict[int, float]:
        """CPU seconds of each connection worker (config ``workers``), by pid."""
        out = {}
        for child in children(self.pid):
            with contextlib.suppress(OSError):
                out[child] = cpu_seconds(child)
        return out

    def worker_rss(self) -> dict[int, tuple[int, int]]:
        """RSS and peak RSS of each connection worker, by pid."""
        out = {}
        for child in children(self.pid):
            with contextlib.suppress(OSError):
                out[child] = (rss_bytes(child), peak_rss_bytes(child))
        return out

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def remove(self) -> None:
        """Stop the server and delete its temporary data directory."""
        self.stop()
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
