"""Real tailscaled clients against meshscale with connection workers (config ``workers: 2``):
their control connections are served by worker processes; they join, see each other, ping over
the data plane, and notice a peer going offline; the server's stop leaves no worker behind."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.interop.realclients import MeshscaleProcess, wait_for
from tests.interop.tailscaled import Tailscaled, start_all, up_all

pytestmark = [pytest.mark.interop, pytest.mark.tailscaled]

Make = Callable[..., Tailscaled]


def _workers(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MeshscaleProcess]:
    srv = MeshscaleProcess(tmp_path, ["sqlite", "derp", "stun"], "workers: 2\n")
    srv.start()
    try:
        srv.cli("users", "create", "alice")
        yield srv
    finally:
        srv.stop()


def test_two_clients_through_workers(server: MeshscaleProcess, tailscaled: Make) -> None:
    assert server.proc is not None
    workers = _workers(server.proc.pid)
    assert len(workers) == 2 and all(_running(p) for p in workers)
    a, b = tailscaled("alpha"), tailscaled("beta")
    start_all([a, b])
    key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json")
    up_all([a, b], server.url, key["key"])
    listed = server.nodes()
    assert set(listed) == {"alpha", "beta"}
    wait_for(lambda: a.peers().get("beta", {}).get("Online") is True, 30, "beta online for alpha")
    wait_for(lambda: b.peers().get("alpha", {}).get("Online") is True, 30, "alpha online for beta")
    # The control connections are the workers' (each worker logs what it adopts).
    log = server.log.read_text(errors="replace")
    assert "2 connection workers started" in log
    assert len(re.findall(r"worker DEBUG .* control connection \d+ adopted", log)) >= 2, log

    b_ip = listed["beta"]["ip_addresses"][0]
    out = a.cli("ping", "--until-direct=false", "-c", "2", b_ip).stdout
    assert re.search(r"pong from beta ", out), out

    # beta's daemon stops: its worker reports the connection gone, the owner marks it offline
    # and alpha's stream (in a worker too) is told.
    b.stop()
    wait_for(lambda: server.nodes()["beta"]["online"] is False, 30, "beta offline in meshscale")
    wait_for(lambda: a.peers()["beta"]["Online"] is False, 30, "beta offline for alpha")
    assert server.nodes()["alpha"]["online"] is True

    server.stop()
    wait_for(lambda: not any(_running(p) for p in workers), 10, "workers gone after stop")
    assert os.path.exists(server.log)
