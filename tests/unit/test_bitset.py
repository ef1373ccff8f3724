"""meshscale.bitset: sets of node IDs as ints, round-tripped whatever their density."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshscale import bitset


@given(st.sets(st.integers(0, 20_000), max_size=3000))
def test_members_of_round_trip(ids: set[int]) -> None:
    bits = bitset.of(ids)
    assert bitset.members(bits) == sorted(ids)
    assert bitset.count(bits) == len(ids)
    assert all(bitset.has(bits, i) for i in ids)


def test_dense_sparse_and_few() -> None:
    for ids in (range(10_000), range(0, 10_000, 7), [3, 9_999], []):
        assert bitset.members(bitset.of(ids)) == list(ids)


def test_slots_reuse_positions_so_ints_stay_as_wide_as_the_live_nodes() -> None:
    slots = bitset.Slots()
    live: list[int] = list(range(1_000_000, 1_000_100))  # IDs in the millions
    bits = slots.of(live)
    assert bits.bit_length() <= 100 and slots.ids(bits) == live
    next_id = 1_000_100
    # Ephemeral churn: 50,000 joins and leaves; the widest int stays 100 bits.
    for _ in range(50_000):
        gone = live.pop(0)
        assert slots.ids(slots.bit(gone)) == [gone]
        slots.release(gone)
        live.append(next_id)
        next_id += 1
        assert slots.slot(live[-1]) < 100
    assert slots.width() == 100
    bits = slots.of(live)
    assert bits.bit_length() <= 100
    assert slots.ids(bits) == sorted(live)  # IDs come back ascending whatever their slots
    assert slots.ids(bits & ~slots.bit(live[5])) == sorted(live[:5] + live[6:])


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=300))
def test_slots_match_a_set_of_ids(ops: list[tuple[bool, int]]) -> None:
    slots = bitset.Slots()
    alive: set[int] = set()
    next_id = 10**7
    for join, pick in ops:
        if join or not alive:
            alive.add(next_id)
            slots.slot(next_id)
            next_id += 1
        else:
            gone = sorted(alive)[pick % len(alive)]
            alive.discard(gone)
            slots.release(gone)
        bits = slots.of(alive)
        assert slots.ids(bits) == sorted(alive)
        assert slots.width() <= max(1, max_alive(ops))


def max_alive(ops: list[tuple[bool, int]]) -> int:
    alive = peak = 0
    for join, _ in ops:
        alive = alive + 1 if join or not alive else alive - 1
        peak = max(peak, alive)
    return peak
