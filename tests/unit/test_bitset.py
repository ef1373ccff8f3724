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
