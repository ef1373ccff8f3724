"""The load generator's map reader: every head and delta decoded, with few zstd contexts.

A full map's head frame is decoded as its bytes arrive, so a head in progress needs a
streaming context of its own; those are lent by the fleet and given back, so a fleet holds as
many as heads were read at once, not one per member. A big message of one frame (a storm's
batched patches, 626 KB at 5,000 nodes) is kept whole and decoded in one call: streamed, it
took a context with a 512 KB window per stream receiving one (the 5,000-node storm's slow
runs, docs/performance.md).
"""

from __future__ import annotations

import json
import random
import struct

import zstandard

from meshscale.bench.fleet import HEAD_ONLY, Fleet, MapReader, Member


def _full_map(node_id: int) -> bytes:
    """A big message as the server sends it: head frame, then peer chunks (frames)."""
    c = zstandard.ZstdCompressor(level=1)
    rnd = random.Random(node_id)
    head = c.compress(json.dumps({"Node": {"ID": node_id}, "DERPMap": {"Regions": {}},
                                  "Domain": rnd.randbytes(5000).hex()},
                                 separators=(",", ":")).encode())
    assert len(head) > 3000  # spans several of the test's pieces
    chunks = b"".join(c.compress(json.dumps([{"ID": i, "Key": rnd.randbytes(256).hex()}]).encode())
                      for i in range(200))
    body = head + chunks
    assert len(body) > HEAD_ONLY
    return struct.pack("<I", len(body)) + body


def _delta(marker: str) -> bytes:
    body = zstandard.ZstdCompressor(level=1).compress(json.dumps(
        {"PeersChangedPatch": [{"NodeID": 9, "Endpoints": [marker]}]}).encode())
    return struct.pack("<I", len(body)) + body


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_heads_read_at_once_borrow_contexts_and_give_them_back() -> None:
    fleet = Fleet("127.0.0.1", 1)
    members = [Member(fleet, i, f"n{i}") for i in range(3)]
    readers = [MapReader(m) for m in members]
    maps = [_full_map(100 + i) for i in range(3)]
    # Interleaved in small pieces: all three heads are in progress at the same time.
    streams = [_pieces(m, 1000) for m in maps]
    for step in range(max(map(len, streams))):
        for reader, pieces in zip(readers, streams, strict=True):
            if step < len(pieces):
                reader.feed(pieces[step])
    assert [m.node_id for m in members] == [100, 101, 102]
    assert [m.full_maps for m in members] == [1, 1, 1]
    assert len(fleet.zstd._free) == 3  # three lent at once, all given back
    # One after the other: the same context serves each in turn.
    fleet2 = Fleet("127.0.0.1", 1)
    for i in range(3):
        member = Member(fleet2, i, f"m{i}")
        reader = MapReader(member)
        for piece in _pieces(_full_map(200 + i), 5000):
            reader.feed(piece)
        assert member.node_id == 200 + i
    assert len(fleet2.zstd._free) == 1


def test_deltas_are_decoded_with_the_shared_context() -> None:
    fleet = Fleet("127.0.0.1", 1)
    members = [Member(fleet, i, f"n{i}") for i in range(2)]
    readers = [MapReader(m) for m in members]
    watch = fleet.watch("10.0.0.1:1", 2)
    # A delta split across reads on one stream while the other's arrives whole.
    first = _delta("10.0.0.1:1")
    readers[0].feed(first[:5])
    readers[1].feed(_delta("10.0.0.1:1"))
    readers[0].feed(first[5:])
    assert sorted(watch.seen_by) == [0, 1]
    assert not fleet.zstd._free  # no streaming context was needed


def test_a_big_single_frame_message_is_decoded_whole() -> None:
    fleet = Fleet("127.0.0.1", 1)
    member = Member(fleet, 0, "n0")
    reader = MapReader(member)
    rnd = random.Random(7)
    patches = [{"NodeID": i, "Endpoints": [rnd.randbytes(40).hex()]} for i in range(2000)]
    raw = json.dumps({"PeersChangedPatch": patches}).encode()
    body = zstandard.ZstdCompressor(level=1).compress(raw)
    assert len(body) > HEAD_ONLY
    seen: list[bytes] = []
    fleet.raw_observers.append(lambda b, _now, _m: seen.append(b))
    message = struct.pack("<I", len(body)) + body
    # The length and fewer bytes than a frame header first: the reader waits for the header.
    for piece in [message[:10], *_pieces(message[10:], 16384)]:
        reader.feed(piece)
    assert seen == [raw]  # all of it decoded, in one piece
    assert member.full_maps == 0 and member.messages == 1
    assert not fleet.zstd._free  # no streaming context was lent
