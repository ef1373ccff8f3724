"""A node's PacketFilter as JSON bytes and a digest, from parts rendered once per grant.

At 10,000 nodes a team server's filter lists about 1,250 source addresses, and every member of
the team gets the same list: a grant's SrcIPs are one ``SrcList`` object (``CompiledGrant``
caches it until the grant's members change), whose JSON and digest are made once and spliced
into the filter of every node that receives the rule. Only the small per-node rest of a rule
(its DstPorts: the node's own addresses) is serialized per node.

The JSON is byte for byte what ``orjson.dumps`` gives for the same rules. The digest is not a
hash of that JSON but of its parts (a grant's SrcIPs by their digest): it tells whether a
stream's filter changed, and the mapper computes it the same way for full maps and deltas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson


class SrcList(list[str]):
    """A rule's SrcIPs shared by every rule made from one grant; never mutated once built (a
    change to the grant builds a new one)."""

    __slots__ = ("_digest", "_json")
    _json: bytes
    _digest: bytes

    def rendered(self) -> tuple[bytes, bytes]:
        """(JSON, 16-byte digest), made on first use."""
        try:
            return self._json, self._digest
        except AttributeError:
            # An exact-size copy: orjson's bytes keep its whole output buffer (4 KiB at
            # least), and a user's autogroup:self sources are a few dozen bytes.
            self._json = memoryview(orjson.dumps(list(self))).tobytes()
            self._digest = hashlib.blake2b(self._json, digest_size=16).digest()
            return self._json, self._digest


def render_filter(rules: Sequence[dict[str, Any]]) -> tuple[bytes, bytes]:
    """``(orjson.dumps(rules), digest)``, with each SrcList's JSON made only once."""
    h = hashlib.blake2b(digest_size=16)
    parts: list[bytes] = []
    for rule in rules:
        src = rule.get("SrcIPs")
        if type(src) is SrcList and next(iter(rule)) == "SrcIPs":
            src_json, src_digest = src.rendered()
            rest = orjson.dumps({k: v for k, v in rule.items() if k != "SrcIPs"})
            part = b'{"SrcIPs":' + src_json + (b"," + rest[1:] if len(rest) > 2 else b"}")
            # Length-prefixed, tagged parts: no two different filters feed the same bytes.
            h.update(b"S" + src_digest + len(rest).to_bytes(4, "little") + rest)
        else:
            part = orjson.dumps(rule)
            h.update(b"R" + len(part).to_bytes(4, "little") + part)
        parts.append(part)
    return b"[" + b",".join(parts) + b"]", h.digest()
