"""The front door's check before a worker takes a /ts2021 connection: bytes its reader holds
past what read_head read would be lost on the way, and are seen from the reader's count."""

from __future__ import annotations

from meshscale.httphead import read_head
from meshscale.workers.handover import CountingReader, early_data

HEAD = b"POST /ts2021 HTTP/1.1\r\nHost: a\r\nUpgrade: tailscale-control-protocol\r\n\r\n"


async def test_nothing_past_the_head_read_is_not_early_data() -> None:
    reader = CountingReader()
    reader.feed_data(HEAD + b"rest")  # read with the head: travels as head.rest
    head = await read_head(reader)
    assert head is not None and head.rest == b"rest"
    assert reader.received == len(head.raw)
    assert not early_data(reader, len(head.raw))
    reader.feed_data(b"")  # asyncio's protocols never feed nothing, but it counts as nothing
    assert not early_data(reader, len(head.raw))


async def test_bytes_held_past_the_head_read_are_early_data() -> None:
    reader = CountingReader()
    reader.feed_data(HEAD + b"\x17" * (200 << 10))  # more than read_head's one 64 KiB read
    head = await read_head(reader)
    assert head is not None and len(head.raw) == 64 << 10
    assert early_data(reader, len(head.raw))
    # The same after a quiet head: a chunk that arrives before the check is seen.
    reader = CountingReader()
    reader.feed_data(HEAD)
    head = await read_head(reader)
    assert head is not None and not early_data(reader, len(head.raw))
    reader.feed_data(b"x")
    assert early_data(reader, len(head.raw))
