"""Each server owns its loop trace: two servers in one process never write into each other's
file, and ``MESHSCALE_LOOPTRACE`` still makes ``meshscale serve`` write one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshscale.looptrace import ENV
from meshscale.server import Server
from tests.cli.serverproc import Serve, write_config
from tests.plugin.simnodes import join
from tests.waiting import wait_until


def full_maps(path: Path) -> list[str]:
    """The ``full NODE ...`` lines written so far (the lag monitor flushes every 10 ms)."""
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if line.startswith("full ")]


async def test_two_servers_in_one_process_do_not_share_a_trace(
        meshscale_server_factory: Callable[..., Any], tmp_path: Path) -> None:
    one: Server = await meshscale_server_factory(plugins=["sqlite"])
    two: Server = await meshscale_server_factory(plugins=["sqlite"])
    keys = []
    for server in (one, two):
        assert server.state is not None
        _, key = server.state.create_key(server.state.create_user("alice"), reusable=True)
        keys.append(key)
    one.trace.open(tmp_path / "one")  # after start: the mapper holds the same object
    try:
        assert not two.trace.on
        await join(two, keys[1], "on-two")  # a full map on the untraced server
        _, _, first = await join(one, keys[0], "on-one")
        assert first is not None
        await wait_until(lambda: full_maps(tmp_path / "one"), "server one's full map traced")
        two.trace.open(tmp_path / "two")
        await join(two, keys[1], "on-two-again")
        await wait_until(lambda: full_maps(tmp_path / "two"), "server two's full map traced")
    finally:
        one.trace.close()
        two.trace.close()
    # One full map each, for the node that joined while that server was tracing.
    one_id = first["Node"]["ID"]
    assert [line.split()[1] for line in full_maps(tmp_path / "one")] == [str(one_id)]
    assert len(full_maps(tmp_path / "two")) == 1


def test_the_env_var_makes_serve_write_the_trace(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace"
    monkeypatch.setenv(ENV, str(trace))  # the subprocess inherits it
    serve = Serve(write_config(tmp_path))
    code, log = serve.stop()
    assert code == 0, log
    lines = trace.read_text().splitlines()
    assert lines and lines[0].startswith("start "), lines
