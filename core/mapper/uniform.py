"""Full maps when every viewer sees every peer alike (no policy limits visibility, no routers).

Then a full map's peer list is the same for every stream but for the viewer itself, so its cost
should not grow with the number of peers: the peers' IDs are laid out in chunks once (again only
when nodes come or go), each chunk's compressed frame comes from the chunk cache by version, and
the viewer's own chunk is spliced from cached sub-chunks with only the sub-chunk holding the
viewer compressed per stream. The user profiles of all nodes are listed once per change too.
Before this, every full map walked, sorted and profiled all N peers in Python: at 2,000 nodes
about a quarter of a storm's server CPU (issue 19).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from meshscale import tailcfg
from meshscale.mapper import wire
from meshscale.mapper.frames import COMMA, ChunkCache, compress
from meshscale.state.models import Node, User

Part = tuple[bytes, bytes]  # (json, zstd frame)


class UniformPeers:
    SUB = 16  # IDs per sub-chunk of the viewer's own chunk: at most 15 peers compressed per map

    def __init__(self, chunks: ChunkCache, versions: Mapping[int, int],
                 sub_versions: Mapping[int, int]) -> None:
        self._chunks = chunks
        self._versions = versions  # chunk index -> version, bumped on any change in its range
        self._sub_versions = sub_versions  # the same per sub-chunk (index // SUB)
        self._sub = ChunkCache()
        # Bumped (changed()) when nodes are added or removed or users or nodes change other
        # than by patches: the layout and the profile list are rebuilt on next use.
        self.version = 0
        self._layout_key: tuple[int, int] | None = None
        self._layout: list[tuple[int, tuple[int, ...]]] = []
        self._profiles_key: tuple[int, int] | None = None
        self._entries: list[tuple[int, dict[str, Any]]] = []
        self._tagged = False

    def changed(self) -> None:
        self.version += 1

    def layout(self, nodes: Mapping[int, Node]) -> list[tuple[int, tuple[int, ...]]]:
        """(chunk index, sorted IDs in it) for every non-empty chunk, in order."""
        key = (len(nodes), self.version)
        if key != self._layout_key:
            step = ChunkCache.CHUNK
            out: dict[int, list[int]] = {}
            for i in sorted(nodes):
                out.setdefault(i // step, []).append(i)
            self._layout = [(index, tuple(ids)) for index, ids in out.items()]
            self._layout_key = key
        return self._layout

    def profiles(self, nodes: Mapping[int, Node], users: Mapping[int, User],
                 viewer: Node) -> list[dict[str, Any]]:
        """What MapBuilder._profiles([viewer, *all other nodes]) returns, without the walk:
        the viewer's user first, then users by their lowest node ID, the tagged user last."""
        key = (len(nodes), self.version)
        if key != self._profiles_key:
            seen: set[int] = set()
            entries: list[tuple[int, dict[str, Any]]] = []
            tagged = False
            for i in sorted(nodes):
                uid = nodes[i].user_id
                if uid is None:
                    tagged = True
                elif uid not in seen:
                    seen.add(uid)
                    u = users.get(uid)
                    if u is not None:
                        entries.append((uid, wire.user_profile(u)))
            self._entries, self._tagged = entries, tagged
            self._profiles_key = key
        first = viewer.user_id
        out = [p for uid, p in self._entries if uid == first]
        out += [p for uid, p in self._entries if uid != first]
        if self._tagged:
            out.append(dict(tailcfg.TAGGED_USER))
        return out

    def parts(self, nodes: Mapping[int, Node], viewer_id: int,
              fragment: Callable[[Node], bytes]) -> list[Part]:
        """The compressed peer list of ``viewer_id``'s full map, commas between the parts."""

        def frags(ids: tuple[int, ...]) -> list[bytes]:
            return [fragment(nodes[i]) for i in ids]

        own = viewer_id // ChunkCache.CHUNK
        out: list[Part] = []
        for index, ids in self.layout(nodes):
            if index == own:
                pieces = self._own_chunk(ids, viewer_id, frags)
            else:
                pieces = [self._chunks.get_versioned(index, self._versions.get(index, 0),
                                                     partial(frags, ids))]
            for piece in pieces:
                if out:
                    out.append(COMMA)
                out.append(piece)
        return out

    def _own_chunk(self, ids: tuple[int, ...], viewer_id: int,
                   frags: Callable[[tuple[int, ...]], list[bytes]]) -> list[Part]:
        groups: dict[int, list[int]] = {}
        for i in ids:
            groups.setdefault(i // self.SUB, []).append(i)
        pieces: list[Part] = []
        for sub, group in groups.items():
            if viewer_id // self.SUB == sub:
                rest = tuple(i for i in group if i != viewer_id)
                if rest:
                    body = b",".join(frags(rest))
                    pieces.append((body, compress(body)))
            else:
                pieces.append(self._sub.get_versioned(sub, self._sub_versions.get(sub, 0),
                                                      partial(frags, tuple(group))))
        return pieces
