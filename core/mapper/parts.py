"""What one flush says to which streams: the parts of its message (PeersChanged, patches,
PeersRemoved), shared by every stream that gets the same (the mapper's half that builds them;
mapper.py sends them)."""

from __future__ import annotations

import operator
from functools import partial

from meshscale import bitset
from meshscale.mapper.builder import MapBuilder
from meshscale.mapper.frames import dumps
from meshscale.mapper.session import MapSession
from meshscale.state import changes as ch
from meshscale.state.models import Node

# One kind of news in a flush's message, as '"Field":value' bytes: the part every stream gets
# (or None) and, per stream ID, the part that stream gets instead (None: nothing).
Parts = tuple[bytes | None, dict[int, bytes | None]]


class FlushParts(MapBuilder):
    sessions: dict[int, MapSession]

    def _viewers(self, node_id: int) -> list[MapSession]:
        if node_id in self.state.pending:
            return []  # awaiting approval: nobody sees it
        visible = self.visible_ids(node_id)
        if visible is None:
            return [s for i, s in self.sessions.items() if i != node_id]
        sessions = self.sessions
        return [sessions[i] for i in visible if i != node_id and i in sessions]

    def _remove_parts(self, gone: list[int]) -> Parts:
        """PeersRemoved: the batch's deleted nodes each stream holds."""
        mask = self.slots.of(gone)
        edit = bitset.SharedEdit(lambda known: known & ~mask)
        held_part: dict[int, bytes] = {}  # held bits -> part
        per: dict[int, bytes | None] = {}
        for s in self.sessions.values():
            view = self._view(s)
            for i in gone:
                view.peers.pop(i, None)
            if s.known is None:  # holds every live node: the default part
                continue
            held = s.known & mask
            if held:
                s.known = edit(s.known)
                part = held_part.get(held)
                if part is None:
                    part = held_part[held] = b'"PeersRemoved":' + dumps(self.slots.ids(held))
                per[s.node_id] = part
            else:
                per[s.node_id] = None
        # No stream's int has their bits now (the engine's classes were dropped when it heard
        # of the removals): their slots may go to the next nodes.
        for i in gone:
            self.slots.release(i)
        return b'"PeersRemoved":' + dumps(gone), per

    def _patch_parts(self, patches: dict[int, ch.Patch]) -> Parts:
        """PeersChangedPatch: one shared part for nodes every stream sees, plus per stream
        the patches of nodes policy restricts."""
        broadcast: list[bytes] = []
        specific: dict[int, list[bytes]] = {}
        own: dict[int, bytes] = {}
        for node_id in sorted(patches):
            node = self.state.nodes.get(node_id)
            if node is None or node_id in self.state.pending:
                continue
            f = patches[node_id]
            body = dumps(self._patch_of(node, f))
            visible = self.visible_ids(node_id)
            if visible is None:
                # The node itself gets it too: a client ignores patches for IDs it does not
                # hold as peers (after a netmap rebuild: docs/performance.md), and skipping
                # it would cost a message of its own.
                broadcast.append(body)
            else:
                # Here too (when the class int holds the node): a class's streams then share
                # one list, one message; without it each of a restrictive storm's 10,000
                # streams had a message of its own, ~100 KB each (issue 19).
                own[node_id] = body
                for i in visible:
                    if i in self.sessions:
                        specific.setdefault(i, []).append(body)
        head = b'"PeersChangedPatch":['
        default = head + b",".join(broadcast) + b"]" if broadcast else None
        # Streams seeing the same changed nodes (a team's servers) share one part, so one
        # message: compressed once, queued once however many lag (restrictive storms).
        shared: dict[tuple[int, ...], bytes] = {}
        per: dict[int, bytes | None] = {}
        for i, items in specific.items():
            if len(items) == 1 and items[0] is own.get(i):
                continue  # only its own patch: no message for it
            part = shared.get(key := tuple(map(id, items)))
            per[i] = part or shared.setdefault(key, head + b",".join([*broadcast, *items]) + b"]")
        return default, per

    def _upsert_parts(self, upserts: dict[int, bool]) -> Parts:
        """PeersChanged (whole nodes) and their UserProfiles; shared by streams with the same
        view."""
        per_stream: dict[int, list[bytes]] = {}
        profiles_for: dict[int, list[Node]] = {}
        for node_id in sorted(upserts):
            node = self.state.nodes.get(node_id)
            if node is None:
                continue
            self._caps[node.id] = self._caps_json(node.id)
            edit = bitset.SharedEdit(partial(operator.or_, self.slots.bit(node.id)))
            for s in self._viewers(node.id):
                if s.known is not None:
                    s.known = edit(s.known)
                sig = self.peer_sig(node, s.node_id)
                self._record(s, node.id, sig)
                per_stream.setdefault(s.node_id, []).append(self._fragment(node, sig))
                profiles_for.setdefault(s.node_id, []).append(node)
        shared: dict[tuple[int, ...], bytes] = {}
        per: dict[int, bytes | None] = {}
        for stream_id, frags in per_stream.items():
            key = tuple(id(f) for f in frags)
            part = shared.get(key)
            if part is None:
                profiles = dumps(self._profiles(profiles_for[stream_id]))
                part = shared[key] = (b'"PeersChanged":[' + b",".join(frags)
                                      + b'],"UserProfiles":' + profiles)
            per[stream_id] = part
        return None, per
