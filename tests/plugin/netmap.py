"""A client-side netmap: what a Tailscale client holds after a full map and its deltas.

Applies MapResponses as tailscale's ``controlclient`` mapSession does
(``updateStateFromResponse`` / ``updatePeersStateFromResponse`` in control/controlclient/map.go):

- a non-empty ``Peers`` replaces the whole peer set and precludes the other peer deltas; an
  empty or missing one changes nothing;
- otherwise ``PeersRemoved``, then ``PeersChanged`` (whole nodes), then ``PeersChangedPatch``
  (fields of peers the client already holds; patches for unknown IDs are ignored);
- ``PacketFilter`` replaces the "base" named filter, ``PacketFilters`` edits named chunks
  (a null value deletes, ``"*": null`` clears all); the filter is their concatenation by name;
- ``Node``, ``SSHPolicy``, ``DNSConfig``, ``DERPMap`` replace when present (absent or null:
  unchanged); ``UserProfiles`` are merged by ID and never pruned.

``view()`` is the comparable netmap: the fields a fresh server's full map must equal.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from meshscale.tailcfg import parse_gotime

# Peer fields that are clocks, not state: a delta carries the moment it was sent.
_VOLATILE = ("LastSeen",)
# What the client itself reports about itself: its own copy in the self node is never read
# (the client knows its endpoints, DERP home and disco key), and servers do not resend the self
# node when only these change.
_SELF_REPORTED = ("Endpoints", "HomeDERP", "DERP", "DiscoKey", "Online")


class NetMap:
    def __init__(self) -> None:
        self.node: dict[str, Any] | None = None
        self.peers: dict[int, dict[str, Any]] = {}
        self.filters: dict[str, list[Any]] = {}
        self.ssh: Any = None
        self.dns: Any = None
        self.derp: Any = None
        self.domain = ""
        self.profiles: dict[int, dict[str, Any]] = {}
        self.messages = 0

    def apply(self, msg: dict[str, Any]) -> None:
        self.messages += 1
        self._apply_peers(msg)
        if msg.get("Node") is not None:
            self.node = msg["Node"]
        for up in msg.get("UserProfiles") or ():
            self.profiles[up["ID"]] = up
        if msg.get("DERPMap") is not None:
            self.derp = msg["DERPMap"]
        if msg.get("PacketFilter") is not None:
            self.filters["base"] = msg["PacketFilter"]
        named = msg.get("PacketFilters")
        if named is not None:
            if "*" in named and named["*"] is None:
                self.filters = {}
            for k, v in named.items():
                if k == "*":
                    continue
                if v is not None:
                    self.filters[k] = v
                else:
                    self.filters.pop(k, None)
        if msg.get("DNSConfig") is not None:
            self.dns = msg["DNSConfig"]
        if msg.get("SSHPolicy") is not None:
            self.ssh = msg["SSHPolicy"]
        if msg.get("Domain"):
            self.domain = msg["Domain"]

    def _apply_peers(self, msg: dict[str, Any]) -> None:
        if msg.get("Peers"):
            self.peers = {p["ID"]: p for p in msg["Peers"]}
            return  # a full peer list precludes every other peer delta
        for i in msg.get("PeersRemoved") or ():
            self.peers.pop(i, None)
        for p in msg.get("PeersChanged") or ():
            self.peers[p["ID"]] = p
        for pc in msg.get("PeersChangedPatch") or ():
            held = self.peers.get(pc["NodeID"])
            if held is None:
                continue
            held = self.peers[pc["NodeID"]] = dict(held)
            if pc.get("DERPRegion"):
                held["HomeDERP"] = pc["DERPRegion"]
            if pc.get("Cap"):
                held["Cap"] = pc["Cap"]
            for field in ("Endpoints", "Key", "DiscoKey", "Online", "LastSeen", "KeyExpiry",
                          "KeySignature", "CapMap"):
                if pc.get(field) is not None:
                    held[field] = pc[field]

    @property
    def packet_filter(self) -> list[Any]:
        return [rule for name in sorted(self.filters) for rule in self.filters[name]]

    def view(self, now: datetime) -> dict[str, Any]:
        """The netmap as a client uses it, normalized for comparison."""
        peers = {i: _peer_view(p, now) for i, p in sorted(self.peers.items())}
        users = {p["User"] for p in peers.values()}
        if self.node is not None:
            users.add(self.node["User"])
        return {
            "Node": _self_view(self.node, now) if self.node is not None else None,
            "Peers": peers,
            "PacketFilter": self.packet_filter,
            "SSHPolicy": self.ssh,
            "DNSConfig": self.dns,
            "DERPMap": self.derp,
            "Domain": self.domain,
            "UserProfiles": {u: self.profiles.get(u) for u in sorted(users)},
        }


def _peer_view(p: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = copy.deepcopy(p)
    for field in _VOLATILE:
        out.pop(field, None)
    # Clients decide expiry from KeyExpiry against their clock (ipnlocal's expiry manager),
    # whatever ``Expired`` the server sent; a patch carries only KeyExpiry.
    out.pop("Expired", None)
    out.pop("DERP", None)  # legacy spelling of HomeDERP; upgradeNode folds it in
    expiry = parse_gotime(out.get("KeyExpiry"))
    if expiry is None:
        out.pop("KeyExpiry", None)  # Go's zero time: the same as absent (never expires)
    if expiry is not None and expiry <= now:
        out["Expired"] = True
    return out


def _self_view(n: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = _peer_view(n, now)
    for field in _SELF_REPORTED:
        out.pop(field, None)
    if isinstance(out.get("Hostinfo"), dict):
        out["Hostinfo"].pop("NetInfo", None)
    return out
