"""The MESHSCALE_LOOPTRACE switch: off it writes nothing; on, it logs lags and the steps asked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshscale import looptrace


async def test_a_blocked_loop_shows_as_a_lag_in_the_sink() -> None:
    lags: list[tuple[float, float]] = []
    monitor = looptrace.LagMonitor(asyncio.get_running_loop(),
                                   lambda when, lag: lags.append((when, lag)))
    monitor.start()
    await asyncio.sleep(0.03)
    time.sleep(0.1)  # noqa: ASYNC251 - one long turn on purpose, as a whole flush was
    await asyncio.sleep(0.03)
    monitor.stop()
    assert len(lags) == 1 and 0.07 < lags[0][1] < 0.5


async def test_off_by_default_and_on_writes_lines(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(looptrace.ENV, raising=False)
    trace = looptrace.LoopTrace()
    assert not trace.open_from_env() and not trace.on
    trace.record("full", 1, 2.0)  # off: nothing, no error
    out = tmp_path / "trace"
    monkeypatch.setenv(looptrace.ENV, str(out))
    assert trace.open_from_env()
    try:
        assert trace.on
        trace.record("full", 7, 1.5, 2.25, 1234)
        time.sleep(0.05)  # noqa: ASYNC251 - a lag to log, on purpose
        await asyncio.sleep(0.02)
    finally:
        trace.close()
    lines = out.read_text().splitlines()
    assert lines[0].startswith("start ")
    assert "full 7 1.5000 2.2500 1234" in lines
    assert any(line.startswith("lag ") for line in lines)
    assert not trace.on
    trace.record("full", 8, 1.0)  # closed: off again, the file untouched
    assert out.read_text().splitlines() == lines


async def test_two_traces_in_one_process_write_their_own_files(tmp_path: Path) -> None:
    a, b = looptrace.LoopTrace(), looptrace.LoopTrace()
    a.open(tmp_path / "a")
    try:
        b.record("full", 2, 1.0)  # b is off although a is on
        assert a.on and not b.on
        b.open(tmp_path / "b")
        a.record("full", 1, 1.0)
        b.record("full", 2, 2.0)
        a.close()
        assert not a.on and b.on  # closing one leaves the other tracing
        b.record("full", 3, 3.0)
    finally:
        a.close()
        b.close()
    assert [line for line in (tmp_path / "a").read_text().splitlines()
            if not line.startswith(("start ", "lag "))] == ["full 1 1.0000"]
    assert [line for line in (tmp_path / "b").read_text().splitlines()
            if not line.startswith(("start ", "lag "))] == ["full 2 2.0000", "full 3 3.0000"]
