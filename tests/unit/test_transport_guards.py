"""The sans-IO limits: frame guard, inbound budget, reset counter, connection table, summary log."""

from __future__ import annotations

import logging

import pytest

from meshscale.control.h2guard import (
    PREFACE,
    FrameGuard,
    FrameSizeError,
    InboundBudget,
    WindowCounter,
)
from meshscale.limits import ConnectionTable, Refusal, Slot, SummaryLog, connection_ceiling


def frame(length: int, kind: int, payload: bytes = b"") -> bytes:
    return length.to_bytes(3, "big") + bytes([kind, 0]) + (1).to_bytes(4, "big") + payload


def test_frame_guard_refuses_on_the_header_alone() -> None:
    guard = FrameGuard(16384)
    guard.feed(PREFACE + frame(4, 0, b"abcd"))
    assert guard.data_bytes == 4
    with pytest.raises(FrameSizeError, match="declares 16777215 bytes"):
        guard.feed(frame(2**24 - 1, 0))


def test_frame_guard_byte_at_a_time_counts_data_and_resets() -> None:
    guard = FrameGuard(16384)
    stream = PREFACE + frame(3, 0, b"xyz") + frame(4, 3, b"\0\0\0\x08") + frame(16384, 0,
                                                                             b"q" * 16384)
    for i in range(len(stream)):
        guard.feed(stream[i:i + 1])
    assert guard.preface_done and guard.data_bytes == 3 + 16384 and guard.resets == 1
    with pytest.raises(FrameSizeError):
        for b in frame(16385, 1):
            guard.feed(bytes([b]))


def test_inbound_budget_never_exceeds_its_bound() -> None:
    budget = InboundBudget(200_000)
    assert budget.grant() == 200_000 - 65535  # held 0: the rest of the budget at once
    budget.received(150_000)
    budget.kept(150_000)  # the client holds 150 kB of unfinished bodies
    assert budget.grant() == 0  # window 50 kB + held 150 kB = budget: nothing more
    budget.received(50_000)
    budget.kept(50_000)
    assert budget.window == 0 and budget.grant() == 0  # stalled at the budget
    budget.released(100_000)
    assert budget.grant() == 100_000
    assert budget.held + budget.window <= 200_000


def test_window_counter() -> None:
    c = WindowCounter(limit=3, window=10)
    assert [c.add(t) for t in (0, 1, 2, 3)] == [False, False, False, True]
    assert c.add(10.5) is False  # a new window


def test_connection_table_caps_and_sheds_the_longest_idle() -> None:
    now = [0.0]
    closed: list[str] = []
    table = ConnectionTable(max_total=3, max_per_ip=2, clock=lambda: now[0])

    def admit(ip: str, name: str) -> Slot | Refusal:
        return table.admit(ip, lambda: closed.append(name))

    a, b, a2 = admit("10.0.0.1", "a"), admit("10.0.0.2", "b"), admit("10.0.0.1", "a2")
    assert isinstance(a, Slot) and isinstance(b, Slot) and isinstance(a2, Slot)
    over = admit("10.0.0.1", "a3")
    assert isinstance(over, Refusal) and over.reason == "per-source"
    table.set_busy(a, True)
    table.set_busy(a2, True)
    c = admit("10.0.0.3", "c")  # full: b is the only idle one, so it goes
    assert isinstance(c, Slot) and closed == ["b"] and table.total == 3
    table.set_busy(c, True)
    full = admit("10.0.0.4", "d")  # everything busy: refused, nothing closed
    assert isinstance(full, Refusal) and full.reason == "ceiling" and closed == ["b"]
    table.release(a)
    table.release(a)  # twice is harmless
    assert table.total == 2 and table.per_ip == {"10.0.0.1": 1, "10.0.0.3": 1}


def test_connection_table_sheds_strangers_before_proven_clients() -> None:
    closed: list[str] = []
    table = ConnectionTable(max_total=3, max_per_ip=10)
    node = table.admit("10.0.0.1", lambda: closed.append("node"))  # the oldest idle one...
    assert isinstance(node, Slot)
    table.set_busy(node, True)
    table.set_proven(node)  # ...registered (answered 200), now between requests
    table.set_busy(node, False)
    for name in ("s1", "s2"):
        assert isinstance(table.admit("10.0.0.2", lambda n=name: closed.append(n)), Slot)
    for name in ("s3", "s4"):
        assert isinstance(table.admit("10.0.0.2", lambda n=name: closed.append(n)), Slot)
    assert closed == ["s1", "s2"]  # strangers first, oldest first; the node stays
    assert isinstance(table.admit("10.0.0.3", lambda: None), Slot)
    assert closed == ["s1", "s2", "s3"]


def test_connection_table_uncapped_sources() -> None:
    table = ConnectionTable(max_total=100, max_per_ip=1,
                            uncapped=["127.0.0.1/32", "::1/128", "10.9.0.0/16"])
    for ip in ("127.0.0.1", "127.0.0.1", "::ffff:127.0.0.1", "::1", "::1", "10.9.3.4",
               "10.9.3.4"):
        assert isinstance(table.admit(ip, lambda: None), Slot), ip  # a reverse proxy
    for ip in ("127.0.0.2", "10.8.0.1", "::2"):
        assert isinstance(table.admit(ip, lambda: None), Slot)
        assert isinstance(table.admit(ip, lambda: None), Refusal), ip


def test_summary_log_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    summary = SummaryLog(60, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    for i in range(10_000):
        now[0] = i * 0.001
        summary.note("connections refused (per-source limit)", "127.0.0.2")
    now[0] = 61
    summary.note("accept() failures (Too many open files)")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "9999 connections refused" in lines[1] and "1 accept() failures" in lines[1]


def test_connection_ceiling_leaves_descriptors_spare() -> None:
    assert connection_ceiling(10_000, 1024) == 768
    assert connection_ceiling(100, 1 << 20) == 100
