"""Sets of node IDs as Python ints: bit ``i`` set means node ``i`` is in the set.

At 10,000 nodes such a set is 1.25 KB whatever it holds, where a Python set of 1,000 IDs is
about 40 KB; union, difference and comparison are single C loops over machine words. Being
immutable, one int is shared by every holder of the same set (the policy engine hands the same
object to every node of a class). Bits are not node IDs but ``Slots``: dense positions handed
out to node IDs and reused after a node leaves. Node IDs are never reused, so with ephemeral
nodes coming and going they grow without bound; slots keep every int as wide as the most nodes
alive at once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

# For each byte value, the positions of its set bits.
_POSITIONS: tuple[tuple[int, ...], ...] = tuple(
    tuple(j for j in range(8) if b >> j & 1) for b in range(256))


def of(ids: Iterable[int]) -> int:
    """The set of ``ids`` (non-negative)."""
    ids = list(ids)
    if not ids:
        return 0
    buf = bytearray(max(ids) // 8 + 1)
    for i in ids:
        buf[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(buf, "little")


def members(bits: int) -> list[int]:
    """The IDs in ``bits``, ascending."""
    out: list[int] = []
    if not bits:
        return out
    k = bits.bit_count()
    if k <= 32:
        # Few members: peel off the lowest bit each time (C-speed int operations).
        while bits:
            low = bits & -bits
            out.append(low.bit_length() - 1)
            bits ^= low
        return out
    if k * 4 <= bits.bit_length():
        # Sparse: find each '1' of the binary string (LSB first) in C.
        text = bin(bits)[:1:-1]
        find = text.find
        i = find("1")
        while i >= 0:
            out.append(i)
            i = find("1", i + 1)
        return out
    raw = bits.to_bytes((bits.bit_length() + 7) // 8, "little")
    extend = out.extend
    for n, byte in enumerate(raw):
        if byte:
            base = n * 8
            extend([base + j for j in _POSITIONS[byte]])
    return out


def has(bits: int, i: int) -> bool:
    return bool(bits >> i & 1)


def count(bits: int) -> int:
    return bits.bit_count()


class SharedEdit:
    """One edit applied to many holders' bitsets (the mapper's streams): holders that shared
    one int before share the edited one after (their count stays out of the memory)."""

    def __init__(self, fn: Callable[[int], int]) -> None:
        self.fn = fn
        # id(old) -> (old, new); holding ``old`` keeps its id from being reused meanwhile.
        self.done: dict[int, tuple[int, int]] = {}

    def __call__(self, known: int) -> int:
        hit = self.done.get(id(known))
        if hit is None:
            hit = self.done[id(known)] = (known, self.fn(known))
        return hit[1]


class Slots:
    """Node ID -> bit position, dense: a new node takes the lowest free position.

    One per server (the policy engine's, shared with the mapper), so every int means the same
    nodes to everyone. ``release`` a node's slot only once no int in use has its bit set any
    more (the mapper clears it from every stream when the node leaves): a slot given to the
    next node would make such a bit mean that node.
    """

    def __init__(self) -> None:
        self._slot: dict[int, int] = {}
        self._ids: list[int] = []  # slot -> node ID (-1: free)
        self._free: list[int] = []  # a heap of free slots

    def slot(self, node_id: int) -> int:
        """The node's position, given out on first use."""
        k = self._slot.get(node_id)
        if k is None:
            if self._free:
                k = heapq.heappop(self._free)
                self._ids[k] = node_id
            else:
                k = len(self._ids)
                self._ids.append(node_id)
            self._slot[node_id] = k
        return k

    def bit(self, node_id: int) -> int:
        return 1 << self.slot(node_id)

    def release(self, node_id: int) -> None:
        k = self._slot.pop(node_id, None)
        if k is not None:
            self._ids[k] = -1
            heapq.heappush(self._free, k)

    def of(self, ids: Iterable[int]) -> int:
        """The set of node ``ids``."""
        ids = list(ids)
        found = list(map(self._slot.get, ids))  # C-speed when every node has its slot already
        if None not in found:
            return of(found)  # type: ignore[arg-type]  # no None: checked just above
        slot = self.slot
        return of([slot(i) for i in ids])

    def ids(self, bits: int) -> list[int]:
        """The node IDs in ``bits``, ascending."""
        ids = self._ids
        out = [ids[k] for k in members(bits)]
        out.sort()
        return out

    def width(self) -> int:
        """Positions in use or free: the widest an int can be, in bits."""
        return len(self._ids)
