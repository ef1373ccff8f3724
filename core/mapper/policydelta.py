"""What a policy change means for each affected stream, with the work streams share done once.

For every affected stream the client gets only what differs from what it holds: its
PacketFilter and SSHPolicy when their digests changed, the peers it must drop or add, peers it
sees differently, its self Node. Nodes of one visibility class hold the same peer bitset before
and get the same one after (the policy engine's shared ints), so the lists of removed and added
peers are made once per (before, after) pair of ints and shared; so are the JSON of a filter or
SSH policy several nodes have, and a whole message when several streams get the same one (the
team's users all losing the same servers): it is serialized and compressed once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshscale.mapper.builder import DEFAULT_SIG, MapBuilder
from meshscale.mapper.frames import Message, dumps

if TYPE_CHECKING:
    from meshscale.mapper.session import MapSession
    from meshscale.state.models import Node


def _body(out: dict[str, Any]) -> bytes:
    """``orjson.dumps(out)`` where bytes values are JSON already: a server's 25 KB filter is
    copied once into the message, not through orjson's buffer and an exact-size copy."""
    parts: list[bytes] = []
    for k, v in out.items():
        parts += (b',"' if parts else b'{"', k.encode(), b'":',
                  v if type(v) is bytes else dumps(v))
    parts.append(b"}")
    return b"".join(parts)


class _Diff:
    """Peers leaving and joining between one class's ``before`` and ``after`` ints."""

    __slots__ = ("added", "added_bits", "after", "before", "removed", "removed_bits")

    def __init__(self, before: int, after: int, members: Callable[[int], list[int]]) -> None:
        self.before, self.after = before, after  # held: their ids key the cache
        self.removed_bits = before & ~after
        self.added_bits = after & ~before
        self.removed = members(self.removed_bits)
        self.added = members(self.added_bits)


class PolicyDelta:
    """One policy change (or one flush's own-stream refreshes): ``refresh`` each stream."""

    def __init__(self, builder: MapBuilder, caps_changed: set[int]) -> None:
        self.b = builder
        self.caps_changed = caps_changed
        self._everyone: int | None = None  # every live node: made on first use
        self._after: dict[int, tuple[int, int]] = {}  # id(visible) -> (visible, & everyone)
        self._diffs: dict[tuple[int, int], _Diff] = {}
        self._lists: dict[int, list[int]] = {}  # bits -> members, one list per value
        self._json: dict[bytes, bytes] = {}  # digest -> the JSON, one object
        self._messages: dict[tuple[tuple[str, int], ...], Message] = {}

    def _diff(self, before: int, after: int) -> _Diff:
        key = (id(before), id(after))
        d = self._diffs.get(key)
        if d is None:
            d = self._diffs[key] = _Diff(before, after, self._members)
        return d

    def _members(self, bits: int) -> list[int]:
        # By value: under autogroup:self each user's devices are a class of their own, yet
        # all of a team's users lose the same servers (equal ints, hashed in C).
        ids = self._lists.get(bits)
        if ids is None:
            ids = self._lists[bits] = self.b.slots.ids(bits)
        return ids

    def _fragment(self, data: bytes, dig: bytes) -> bytes:
        frag = self._json.get(dig)
        if frag is None:
            frag = self._json[dig] = data
        return frag

    def refresh(self, s: MapSession, node: Node) -> None:
        b = self.b
        out: dict[str, Any] = {}
        shared = True  # every part of the message is one other streams may have too
        pf_json, pf_digest, ssh_json, ssh_digest = b.policy_json(node.id)
        if pf_digest != s.filter_digest:
            out["PacketFilter"] = self._fragment(pf_json, pf_digest)
            s.filter_digest = pf_digest
        if ssh_digest != s.ssh_digest:
            out["SSHPolicy"] = self._fragment(ssh_json, ssh_digest)
            s.ssh_digest = ssh_digest
        view = b._view(s)
        visible = b.visible_bits(node.id)
        # What the client holds and should hold, as bitsets; its own bit never counts.
        everyone = self._everyone
        if everyone is None:
            everyone = self._everyone = b.live_bits()
        before = everyone if s.known is None else s.known
        if visible is None:
            after = everyone
        else:
            hit = self._after.get(id(visible))
            if hit is None:
                hit = self._after[id(visible)] = (visible, visible & everyone)
            after = hit[1]
        d = self._diff(before, after)
        slots = b.slots
        me = slots.bit(node.id)
        removed, added, added_bits = d.removed, d.added, d.added_bits
        if d.removed_bits & me:
            removed = [i for i in removed if i != node.id]
            shared = False
        if added_bits & me:
            added = [i for i in added if i != node.id]
            added_bits &= ~me
        if view.peers and removed:
            for i in [i for i in view.peers if d.removed_bits & slots.bit(i)]:
                del view.peers[i]
        # Peers already held whose view may differ now: routers (route visibility), peers seen
        # differently before, peers whose CapMap changed; all of them if ours changed.
        if node.id in self.caps_changed:
            recheck_bits = after & ~added_bits & ~me
        else:
            recheck = [*b.state.routes.subnets, *view.peers, *self.caps_changed]
            recheck_bits = slots.of(recheck) & after & ~added_bits & ~me if recheck else 0
        changed: list[dict[str, Any]] = []
        for i in self._members(recheck_bits):
            peer = b.state.nodes[i]
            sig = b.peer_sig(peer, node.id)
            if sig != view.peers.get(i, DEFAULT_SIG):
                b._record(s, i, sig)
                changed.append(b._peer_obj(peer, sig))
        for i in added:
            peer = b.state.nodes[i]
            sig = b.peer_sig(peer, node.id)
            b._record(s, i, sig)
            changed.append(b._peer_obj(peer, sig))
        if removed:
            out["PeersRemoved"] = removed
        if changed:
            shared = False
            out["PeersChanged"] = changed
            if added:
                out["UserProfiles"] = b._profiles(b.state.nodes[i] for i in added)
        s.known = visible  # the class's shared int when the engine gives one
        self_sig = b._self_sig(node)
        if self_sig != view.self_sig:
            view.self_sig = self_sig
            out["Node"] = b.self_node(node)
            shared = False
        if not out:
            return
        if not shared:
            b.deliver((s,), Message(_body(out)))
            return
        key = tuple((k, id(v)) for k, v in out.items())
        msg = self._messages.get(key)
        if msg is None:
            msg = self._messages[key] = Message(_body(out))
        b.deliver((s,), msg)
