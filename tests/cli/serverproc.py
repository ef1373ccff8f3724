"""``meshscale`` as a person runs it: a subprocess per command, a config file, a data dir."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from meshscale.ports import free_port


def write_config(workdir: Path, **overrides: Any) -> Path:
    port = free_port()
    config: dict[str, Any] = {
        "data_dir": str(workdir / "data"),
        "listen_addr": f"127.0.0.1:{port}",
        "server_url": f"http://127.0.0.1:{port}",
        "derp": {"server": {"stun_listen_addr": "127.0.0.1:0"}},
    }
    config.update(overrides)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


#: The command as the tests' environment runs it; a fresh install passes its own console script.
IN_TREE = (sys.executable, "-m", "meshscale.cli.main")


def meshscale(*args: str, cmd: Sequence[str] = IN_TREE, cwd: Path | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def meshscale_json(config: Path, *args: str) -> Any:
    """``meshscale -c CONFIG ARGS -o json``, which must succeed; its parsed output."""
    result = meshscale("-c", str(config), *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (sockets too) by relative path: content hash or kind."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_socket():
            st = path.stat()
            out[rel] = f"socket {st.st_ino}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


class Serve:
    """``meshscale serve`` running until stopped; the banner is read from its stdout."""

    def __init__(self, config: Path, cmd: Sequence[str] = IN_TREE,
                 cwd: Path | None = None) -> None:
        self.config = config
        self.log = config.parent / "serve.log"  # a file: a full stderr pipe would block it
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [*cmd, "-c", str(config), "serve"],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=cwd,
            )
        self.banner = self._read_banner()

    def _read_banner(self, timeout: float = 60) -> list[str]:
        assert self.proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                lines.append(line.rstrip("\n"))
                if line.startswith("Stop it with"):
                    return lines
                continue
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: "
                                     f"{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no banner after {timeout}s: {lines}")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode, self.log.read_text()
