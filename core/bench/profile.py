"""``meshscale bench ... --profile FILE``: sample the server with py-spy while a scenario measures.

py-spy (the ``profile`` extra) attaches to the server process only for the measured part of the
run (not the set-up's registrations), writes its raw collapsed stacks to FILE (flamegraph.pl and
speedscope read them) and the run's figures gain the functions with the most samples.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from meshscale.errors import MeshscaleError

RATE = 200  # samples per second
_LINE = re.compile(r":\d+\)$")
# Inclusive shares are listed for our code and the libraries on the wire path only (the event
# loop's own frames are under everything).
_OURS = ("(core/", "(plugins/", "/meshscale/", "/h2/", "/hpack/")


class ProfileError(MeshscaleError):
    pass


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfileError("--profile needs py-spy: pip install 'meshscale[profile]'")
    return found


class Sampler:
    def __init__(self, path: str) -> None:
        self.path = path
        self.exe = _py_spy()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, pid: int) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - py-spy with our own arguments
            [self.exe, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
             "--output", self.path, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            _out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise ProfileError("py-spy did not stop within 60 s") from None
        if not os.path.exists(self.path):
            raise ProfileError(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
        return summary(self.path)


def summary(path: str, top: int = 15) -> dict[str, Any]:
    """Shares of samples: where the CPU went (self) and under which functions (inclusive)."""
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_LINE.sub(")", fr) for fr in stack.split(";")
                      if not fr.startswith(("process ", "thread "))]
            if frames:
                own[frames[-1]] += n
            for fr in set(frames):
                if any(mark in fr for mark in _OURS):
                    under[fr] += n

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[round(100 * c / max(total, 1), 1), fr] for fr, c in counter.most_common(top)]

    return {"profile_samples": total, "profile_self_pct": share(own),
            "profile_inclusive_pct": share(under)}
