"""The mapper's batching window (mapper/pacing.py), with the clock passed in."""

from __future__ import annotations

import random

import pytest

from meshscale.mapper.pacing import BUSY_SHARE, MAX_DELAY, RATIO, STORM_DELAY, FlushPacer


def test_a_quiet_server_delivers_in_the_same_turn() -> None:
    assert FlushPacer().delay(0.0) == 0.0


def test_a_lone_change_is_not_held_back_while_the_loop_is_mostly_free() -> None:
    # One change at a time (the fan-out benchmark waits for each to arrive everywhere):
    # nothing to batch it with.
    p = FlushPacer()
    p.flushed(10.0, 10.3, 1)
    assert p.delay(10.31) == 0.0
    p.flushed(10.7, 11.0, 1)  # 0.3 s of flushing in the 0.7 s since the last one
    assert p.delay(11.01) == 0.0


def test_batches_are_paced_once_flushing_takes_most_of_the_time() -> None:
    p = FlushPacer()
    p.flushed(10.0, 10.2, 1)
    p.flushed(10.25, 10.45, 2)  # 0.2 s of flushing in the 0.25 s since the last one
    assert p.delay(10.46) == pytest.approx(10.45 + RATIO * 0.2 - 10.46)


def test_one_change_at_a_time_is_never_held_back() -> None:
    # The fan-out benchmark: the next change comes once the last arrived everywhere.
    p = FlushPacer()
    p.flushed(10.0, 10.2, 1)
    p.flushed(10.25, 10.45, 1)
    assert p.delay(10.46) == 0.0


def test_lone_cheap_flushes_back_to_back_are_not_paced() -> None:
    # 1,000 streams: about 15 ms a flush, one change at a time, the next 5 ms later.
    p = FlushPacer()
    p.flushed(1.0, 1.015, 1)
    p.flushed(1.02, 1.035, 1)
    assert p.delay(1.04) == 0.0


def test_while_windows_gather_batches_the_next_flush_waits_ratio_times_the_last_cost() -> None:
    p = FlushPacer()
    p.flushed(10.0, 10.1, 3, waited=True)  # 0.1 s for three changes its window gathered
    assert p.delay(10.1) == pytest.approx(RATIO * 0.1)
    assert p.delay(10.15) == pytest.approx(10.1 + RATIO * 0.1 - 10.15)
    assert p.delay(10.1 + RATIO * 0.1 + 0.01) == 0.0  # the window has passed


def test_changes_of_one_turn_on_a_free_loop_are_not_held_back() -> None:
    # A join is a new node and its coming online: two changes, one turn, nothing waiting.
    p = FlushPacer()
    p.flushed(10.0, 10.04, 2)
    p.flushed(11.0, 11.04, 2)
    assert p.delay(11.05) == 0.0
    p.flushed(11.5, 11.54, 1, waited=True)  # a window that gathered one change: done pacing
    assert p.delay(11.55) == 0.0


def test_the_wait_is_bounded() -> None:
    p = FlushPacer()
    p.flushed(0.0, 2.0, 50, waited=True)  # a two-second flush (a loaded machine)
    assert p.delay(2.0) == pytest.approx(MAX_DELAY)


def test_cheap_flushes_are_not_worth_a_timer() -> None:
    p = FlushPacer()
    p.flushed(1.0, 1.0002, 5, waited=True)
    assert p.delay(1.0002) == 0.0


def test_a_storm_of_cheap_flushes_gathers_for_the_storm_delay() -> None:
    p = FlushPacer()
    p.flushed(1.0, 1.0005, 40)
    assert p.delay(1.01) == STORM_DELAY
    assert p.delay(1.03) == 0.0  # flushes further apart than the gap: no storm


def simulate(rate: float, cost: float, seconds: float = 60.0) -> tuple[float, float, int]:
    """Changes arrive at random, ``rate`` a second on average (a Poisson process, as
    independent nodes' changes do); each flush costs ``cost`` whatever it carries (the
    per-stream write dominates). As in the event loop, every change that arrived while the
    loop was flushing is read before the next flush. Returns (share of time spent flushing,
    worst latency, flushes)."""
    p = FlushPacer()
    rng = random.Random(1)
    busy = worst = 0.0
    flushes = 0
    now = 0.0  # the loop is free from here
    next_change = 0.0
    pending: list[float] = []
    due: float | None = None
    waited = False
    while now < seconds:
        while next_change <= now:  # read what arrived
            pending.append(next_change)
            if due is None:
                wait = p.delay(now)
                due, waited = now + wait, wait > 0
            next_change += rng.expovariate(rate)
        if due is not None and due <= now:
            end = now + cost
            p.flushed(now, end, len(pending), waited)
            worst = max(worst, *(end - a for a in pending))
            busy += cost
            flushes += 1
            now, pending, due = end, [], None
        else:
            now = min(next_change, due if due is not None else next_change)
    return busy / seconds, worst, flushes


@pytest.mark.parametrize("rate", [1.0, 2.0, 3.0, 4.5, 5.0, 10.0, 20.0, 50.0])
def test_flushing_cost_per_second_stops_growing_with_the_change_rate(rate: float) -> None:
    # 10,000 streams: about 0.2 s per flush. Without the window K = 10/s would need
    # 2 s of flushing per second. With it, once most flushes would carry several changes
    # (K >= 10 here) flushing takes a third of the time; below that it takes at most half.
    # No change waits longer than the flush before it, its window and its own flush.
    share, worst, _ = simulate(rate, 0.2)
    assert share <= (1 / (1 + RATIO) if rate >= 10 else BUSY_SHARE) + 0.01
    assert worst <= 0.2 + MAX_DELAY + 0.2 + 1e-9


def test_the_same_number_of_flushes_at_any_high_rate() -> None:
    flushes = {rate: simulate(rate, 0.2)[2] for rate in (10.0, 50.0)}
    assert flushes[10.0] == pytest.approx(flushes[50.0], rel=0.05)
