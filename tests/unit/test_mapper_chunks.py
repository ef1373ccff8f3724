"""Full maps spliced from cached, compressed peer chunks equal maps built peer by peer, and
change whenever a peer changes."""

from __future__ import annotations

import json
from pathlib import Path

import peewee as pw
import zstandard

from meshscale.configload import build_config
from meshscale.mapper.mapper import Mapper
from meshscale.mapper.session import MapSession
from meshscale.policy import AllowAllEngine
from meshscale.simclient import decompress_all
from meshscale.state.store import State
from meshscale.storage.peewee_store import PeeweeStorage


class NonUniform(AllowAllEngine):
    """Same answers, but claims viewers may differ: forces the peer-by-peer path."""

    def uniform_peer_view(self) -> bool:
        return False


def tailnet(tmp_path: Path, nodes: int) -> State:
    cfg = build_config({"data_dir": str(tmp_path)})
    st = State(cfg, PeeweeStorage(pw.SqliteDatabase(str(tmp_path / "db.sqlite"))))
    user = st.create_user("alice")
    _, key = st.create_key(user, reusable=True)
    rec = st.check_auth_key(key)
    for i in range(nodes):
        st.register_with_key(rec, i.to_bytes(32, "big"), (i + 1).to_bytes(32, "big"),
                             {"Hostname": f"n{i}"}, [], 130)
    return st


def decoded(mapper: Mapper, node_id: int) -> dict:
    msg = mapper.full_map(MapSession(node_id, True))
    parts = msg.parts(True)  # a stream sends these unjoined: they must be the frame, in order
    assert len(parts) > 2 and b"".join(parts) == msg.frame(True)
    assert msg.parts(False) == [msg.frame(False)]
    frame = msg.frame(True)[4:]
    body = decompress_all(zstandard.ZstdDecompressor(), frame)
    assert body == msg.body  # the zstd frames and the JSON say the same
    return json.loads(body)


def test_chunked_maps_match_peer_by_peer_maps_and_follow_changes(tmp_path: Path) -> None:
    st = tailnet(tmp_path, 600)  # IDs 1..600: three chunks of 256 IDs
    fast = Mapper(st.config, st, AllowAllEngine(), dict)
    slow = Mapper(st.config, st, NonUniform(), dict)
    for viewer in (1, 300, 600):
        a, b = decoded(fast, viewer), decoded(slow, viewer)
        assert [p["ID"] for p in a["Peers"]] == [i for i in range(1, 601) if i != viewer]
        assert a["Peers"] == b["Peers"]
    # A second map reuses the cached chunks; after a rename the chunk is rebuilt.
    assert decoded(fast, 1)["Peers"] == decoded(slow, 1)["Peers"]
    st.rename_node(400, "renamed")
    fast.flush()
    peers = {p["ID"]: p for p in decoded(fast, 1)["Peers"]}
    assert peers[400]["Name"].startswith("renamed.")
    st.delete_node(500)
    assert 500 not in {p["ID"] for p in decoded(fast, 2)["Peers"]}


def whole(mapper: Mapper, node_id: int) -> dict:
    out = decoded(mapper, node_id)
    out.pop("ControlTime")
    return out


def test_uniform_maps_equal_peer_by_peer_maps_whole(tmp_path: Path) -> None:
    """The uniform path (cached layout, own chunk from sub-chunks, cached profile list) gives
    the same map, byte for byte in JSON, as the peer-by-peer path: at every sub-chunk edge of
    the viewer's own chunk, with several users and tagged nodes, and after nodes and users
    change."""
    st = tailnet(tmp_path, 600)
    bob = st.create_user("bob")
    _, key = st.create_key(bob, reusable=True)
    rec = st.check_auth_key(key)
    for i in range(600, 640):  # IDs 601..640 belong to bob
        st.register_with_key(rec, i.to_bytes(32, "big"), (i + 1).to_bytes(32, "big"),
                             {"Hostname": f"n{i}"}, [], 130)
    st.set_tags(10, ["tag:server"])  # the tagged-devices profile
    fast = Mapper(st.config, st, AllowAllEngine(), dict)
    slow = Mapper(st.config, st, NonUniform(), dict)

    def same(viewers: tuple[int, ...]) -> None:
        fast.flush()
        slow.flush()
        for viewer in viewers:
            a, b = whole(fast, viewer), whole(slow, viewer)
            assert a == b, viewer
            assert [p["ID"] for p in a["Peers"]] == [i for i in sorted(st.nodes) if i != viewer]

    same((1, 10, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257, 300, 512, 600, 601, 640))
    st.delete_node(33)  # a node leaves the viewer's own sub-chunk
    same((32, 34, 1, 40))
    st.rename_user(bob.id, "robert")  # a profile changes
    same((601, 1))
    st.register_with_key(rec, (999).to_bytes(32, "big"), (1000).to_bytes(32, "big"),
                         {"Hostname": "late"}, [], 130)  # a node joins at the end
    same((641, 640, 1, 600))


def test_a_range_keeps_each_viewers_subset_within_the_budget() -> None:
    """Viewers of different classes see different subsets of one ID range: each subset stays
    compressed once (the same bytes object comes back), instead of the classes taking turns
    replacing the one cached chunk; past the byte budget the least recently used goes."""
    from meshscale.mapper.frames import ChunkCache

    cache = ChunkCache()
    team, user = (b'{"ID":1}', b'{"ID":2}'), (b'{"ID":2}', b'{"ID":3}')
    first, second = cache.get(team, True)[1], cache.get(user, True)[1]
    assert cache.get(team, True)[1] is first and cache.get(user, True)[1] is second
    assert zstandard.ZstdDecompressor().decompress(first) == b'{"ID":1},{"ID":2}'
    # A viewer's own range is compressed for it alone, never kept.
    own = (b'{"ID":9}',)
    assert cache.get(own, False)[1] is not cache.get(own, False)[1]
    # Room for exactly two subsets: the least recently used one (team, as user was used last)
    # goes when a third comes; user stays.
    third = (b'{"ID":70}', b'{"ID":71}')
    body, packed = ChunkCache().get(third, True)
    cache.BUDGET = len(b'{"ID":2},{"ID":3}') + len(second) + len(body) + len(packed)
    cache.get(third, True)
    assert cache.get(user, True)[1] is second
    again = cache.get(team, True)[1]
    assert again is not first and again == first
