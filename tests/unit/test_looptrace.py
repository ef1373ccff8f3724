"""The MESHSCALE_LOOPTRACE switch: off it writes nothing; on, it logs lags and the steps asked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshscale import looptrace


async def test_a_blocked_loop_shows_as_a_lag_in_the_sink() -> None:
    lags: list[tuple[float, float]] = []
    monitor = looptrace.LagMonitor(asyncio.get_running_loop(), lags)
    monitor.start()
    await asyncio.sleep(0.03)
    time.sleep(0.1)  # noqa: ASYNC251 - one long turn on purpose, as a whole flush was
    await asyncio.sleep(0.03)
    monitor.stop()
    assert len(lags) == 1 and 0.07 < lags[0][1] < 0.5


async def test_off_by_default_and_on_writes_lines(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(looptrace.ENV, raising=False)
    assert looptrace.install_from_env() is None and not looptrace.on()
    looptrace.record("full", 1, 2.0)  # off: nothing, no error
    out = tmp_path / "trace"
    monkeypatch.setenv(looptrace.ENV, str(out))
    monitor = looptrace.install_from_env()
    try:
        assert looptrace.on()
        looptrace.record("full", 7, 1.5, 2.25, 1234)
        time.sleep(0.05)  # noqa: ASYNC251 - a lag to log, on purpose
        await asyncio.sleep(0.02)
    finally:
        looptrace.stop(monitor)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("start ")
    assert "full 7 1.5000 2.2500 1234" in lines
    assert any(line.startswith("lag ") for line in lines)
    assert not looptrace.on()
