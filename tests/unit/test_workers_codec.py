"""The owner <-> worker messages (meshscale.workers.codec), byte for byte."""

from __future__ import annotations

import pytest

from meshscale.workers import codec


def test_fanout_bytes() -> None:
    keys = [codec.KEY.pack(1, 3), codec.KEY.pack(2, 5)]
    wire = codec.fanout(b"\xaa\xbb", keys)
    assert wire == (b"\x17\x00\x00\x00" b"\x07" b"\x02\x00\x00\x00" b"\xaa\xbb"
                    b"\x01\x00\x00\x00\x03\x00\x00\x00" b"\x02\x00\x00\x00\x05\x00\x00\x00")
    (m,) = codec.Decoder(codec.TO_WORKER).feed(wire)
    assert (m.kind, m.data, m.keys) == (codec.FANOUT, b"\xaa\xbb", b"".join(keys))


def test_headers_and_request_bytes() -> None:
    wire = codec.headers(7, 1, [(":status", "200")], end=False)
    assert wire == (b"\x1a\x00\x00\x00\x02" b"\x07\x00\x00\x00\x01\x00\x00\x00\x00"
                    b"\x01\x00" b"\x07\x00:status" b"\x03\x00200")
    wire = codec.request(7, 1, "POST", "/m", [("a", "b")], b"{}")
    assert wire == (b"\x1d\x00\x00\x00\x15" b"\x07\x00\x00\x00\x01\x00\x00\x00"
                    b"\x04\x00POST" b"\x02\x00/m" b"\x01\x00\x01\x00a\x01\x00b" b"{}")
    (m,) = codec.Decoder(codec.TO_OWNER).feed(wire)
    assert (m.conn, m.stream, m.method, m.path, m.headers, m.data) == (
        7, 1, "POST", "/m", [("a", "b")], b"{}")


def test_small_messages_bytes() -> None:
    assert codec.data(1, 3, 9, b"xy") == (b"\x0f\x00\x00\x00\x03" b"\x01\x00\x00\x00"
                                         b"\x03\x00\x00\x00\x09\x00\x00\x00xy")
    assert codec.end(1, 3) == b"\x09\x00\x00\x00\x04\x01\x00\x00\x00\x03\x00\x00\x00"
    assert codec.abort(4) == b"\x05\x00\x00\x00\x06\x04\x00\x00\x00"
    assert codec.stop() == b"\x01\x00\x00\x00\x08"
    assert codec.ack(1, 3, 2) == (b"\x0d\x00\x00\x00\x16\x01\x00\x00\x00\x03\x00\x00\x00"
                                  b"\x02\x00\x00\x00")
    assert codec.backed(1, 3, True) == b"\x0a\x00\x00\x00\x17\x01\x00\x00\x00\x03\x00\x00\x00\x01"
    assert codec.busy(1, False) == b"\x06\x00\x00\x00\x19\x01\x00\x00\x00\x00"
    assert codec.gone(1) == b"\x05\x00\x00\x00\x1a\x01\x00\x00\x00"
    opened = codec.opened(1, 106, bytes(range(32)))
    assert opened == b"\x29\x00\x00\x00\x14\x01\x00\x00\x00\x6a\x00\x00\x00" + bytes(range(32))


def test_heartbeat_bytes() -> None:
    assert codec.ping(0x01020304) == b"\x05\x00\x00\x00\x09\x04\x03\x02\x01"
    assert codec.pong(7) == b"\x05\x00\x00\x00\x1b\x07\x00\x00\x00"
    (m,) = codec.Decoder(codec.TO_WORKER).feed(codec.ping(5))
    assert (m.kind, m.value) == (codec.PING, 5)
    (m,) = codec.Decoder(codec.TO_OWNER).feed(codec.pong(5))
    assert (m.kind, m.value) == (codec.PONG, 5)
    with pytest.raises(codec.IpcError):  # a PONG is the worker's, never the owner's
        codec.Decoder(codec.TO_WORKER).feed(codec.pong(5))


def test_round_trip_split_anywhere() -> None:
    msgs = [codec.data(1, 3, 0, b"x" * 1000), codec.end(1, 3), codec.done(1, 3),
            codec.hello(b"k" * 32, '{"a": 1}'), codec.abort(2)]
    wire = b"".join(msgs)
    for cut in (1, 3, 4, 5, 17, 1000, len(wire) - 1):
        dec = codec.Decoder(codec.TO_WORKER)
        got = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert [m.kind for m in got] == [codec.DATA, codec.END, codec.DONE, codec.HELLO,
                                         codec.ABORT]
    hello = codec.Decoder(codec.TO_WORKER).feed(msgs[3])[0]
    assert (hello.data, hello.path) == (b"k" * 32, '{"a": 1}')


@pytest.mark.parametrize("wire", [
    b"\x00\x00\x00\x00",  # empty
    (codec.MAX_MESSAGE + 1).to_bytes(4, "little"),  # over the bound
    b"\x01\x00\x00\x00\x63",  # unknown type
    b"\x05\x00\x00\x00\x14\x01\x00\x00\x00",  # a worker's OPENED sent to a worker
    b"\x02\x00\x00\x00\x04\x01",  # END shorter than its fields
    b"\x0a\x00\x00\x00\x04\x01\x00\x00\x00\x03\x00\x00\x00\xff",  # END longer than its fields
    b"\x09\x00\x00\x00\x07\x01\x00\x00\x00\xaa" + b"\x01\x00\x00",  # keys not 8 bytes each
    b"\x0c\x00\x00\x00\x02" + b"\x00" * 8 + b"\x00" + b"\x01\x00",  # headers cut short
])
def test_bad_messages_refused(wire: bytes) -> None:
    with pytest.raises(codec.IpcError):
        codec.Decoder(codec.TO_WORKER).feed(wire)


def test_bad_text_refused() -> None:
    wire = codec.request(1, 1, "POST", "/", [], b"")
    bad = wire.replace(b"POST", b"P\xffST")
    with pytest.raises(codec.IpcError):
        codec.Decoder(codec.TO_OWNER).feed(bad)


def test_adoption() -> None:
    raw = codec.adoption(5, b"init", b"rest")
    assert raw == b"\x05\x00\x00\x00\x04\x00\x00\x00\x04\x00\x00\x00initrest"
    assert codec.parse_adoption(raw) == (5, b"init", b"rest")
    with pytest.raises(codec.IpcError):
        codec.parse_adoption(raw + b"x")
    with pytest.raises(codec.IpcError):
        codec.adoption(1, b"", b"x" * codec.MAX_ADOPTION)


def test_data_parts_are_the_same_bytes_as_data() -> None:
    parts = [b"head", b"chunk-one", b"chunk-two"]
    assert b"".join(codec.data_parts(1, 3, 9, parts)) == codec.data(1, 3, 9, b"".join(parts))
    (m,) = codec.Decoder(codec.TO_WORKER).feed(b"".join(codec.data_parts(1, 3, 9, parts)))
    assert (m.kind, m.conn, m.stream, m.value, m.data) == (
        codec.DATA, 1, 3, 9, b"headchunk-onechunk-two")


def _shared(data: bytes, key: int) -> bytes:
    from meshscale.mapper.frames import Shared

    out = Shared(data)
    out.key = key
    return out


def test_data_cached_bytes_and_the_two_caches_in_step() -> None:
    from meshscale.workers.chunks import ChunkMirror, ChunkStore

    mirror, store = ChunkMirror(10), ChunkStore(10)
    a, b = _shared(b"AAAA", 7), _shared(b"BBBBBB", 9)
    wire = b"".join(codec.data_cached(1, 3, 5, [b"hd", a, a], mirror))
    assert wire == (b"\x2e\x00\x00\x00" b"\x0a" b"\x01\x00\x00\x00\x03\x00\x00\x00\x05\x00\x00\x00"
                    b"\x00\x02\x00\x00\x00hd"  # inline
                    b"\x01\x07\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00AAAA"  # define 7
                    b"\x02\x07\x00\x00\x00\x00\x00\x00\x00")  # ref 7
    (m,) = codec.Decoder(codec.TO_WORKER).feed(wire)
    assert (m.kind, m.conn, m.stream, m.value) == (codec.DATA_CACHED, 1, 3, 5)
    assert store.resolve(m.segments) == [b"hd", b"AAAA", b"AAAA"]
    # b (6 bytes) fits beside a (4 + 6 = 10); c then evicts the least recently used first (a,
    # then b), and a comes back beside c: on both sides alike.
    c = _shared(b"CCCCCC", 11)
    for parts, expect in (([b], [b"BBBBBB"]), ([c], [b"CCCCCC"]), ([a], [b"AAAA"])):
        (m,) = codec.Decoder(codec.TO_WORKER).feed(b"".join(
            codec.data_cached(1, 3, 0, parts, mirror)))
        assert store.resolve(m.segments) == expect
        assert list(mirror.sizes) == list(store.sizes) == list(store.chunks)
    assert store.total <= 10 and list(store.sizes) == [11, 7]  # b, then a went; a came back
    # A chunk larger than the cache travels inline, and is not kept.
    big = _shared(b"x" * 11, 12)
    wire = b"".join(codec.data_cached(1, 3, 0, [big], mirror))
    assert wire[17:18] == b"\x00" and 12 not in mirror.sizes


def test_a_chunk_the_worker_lacks_is_an_error() -> None:
    from meshscale.workers.chunks import ChunkMirror, ChunkStore

    wire = b"".join(codec.data_cached(1, 3, 0, [_shared(b"AAAA", 7)], ChunkMirror(10)))
    (m,) = codec.Decoder(codec.TO_WORKER).feed(wire)
    store = ChunkStore(10)
    store.resolve(m.segments)
    m.segments = [(codec.REF, 8, b"")]
    with pytest.raises(codec.IpcError):
        store.resolve(m.segments)
    with pytest.raises(codec.IpcError):  # an unknown segment type
        codec.Decoder(codec.TO_WORKER).feed(b"\x0e\x00\x00\x00\x0a" + b"\x00" * 12 + b"\x07")
