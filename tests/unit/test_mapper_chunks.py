"""Full maps spliced from cached, compressed peer chunks equal maps built peer by peer, and
change whenever a peer changes."""

from __future__ import annotations

import json
from pathlib import Path

import peewee as pw
import zstandard

from meshscale.config import build_config
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
