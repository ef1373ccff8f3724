"""The wire vocabulary of tailcfg: key and time spellings, the tagged-devices user, the
capability-version floor, which Hostinfo fields peers see. Building messages from state lives in
meshscale.mapper.wire (maps) and meshscale.control.register (RegisterResponse).

Field names are Go's exactly. Key fields are never ``""`` (the Go client rejects the whole message);
times are RFC 3339 with a zone (protocol.md §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

ZERO_KEY = b"\x00" * 32
# Tailscale shows tagged nodes as owned by this pseudo-user; headscale uses the same ID.
TAGGED_USER_ID = 2147455555
TAGGED_USER = {
    "ID": TAGGED_USER_ID,
    "LoginName": "tagged-devices",
    "DisplayName": "Tagged Devices",
}
CAPVER_MIN = 113  # Tailscale v1.80


def too_old(version: int) -> str | None:
    """Why a client of capability ``version`` is refused, or None if it is new enough: the one
    check, in one wording, for ``/machine/register`` and ``/machine/map``."""
    if version >= CAPVER_MIN:
        return None
    return (f"this Tailscale client is too old (capability version {version}); meshscale needs "
            f"Tailscale v1.80 or newer (capability version {CAPVER_MIN})")


def nodekey(raw: bytes) -> str:
    return "nodekey:" + raw.hex()


def mkey(raw: bytes) -> str:
    return "mkey:" + raw.hex()


def discokey(raw: bytes) -> str:
    return "discokey:" + raw.hex()


def parse_key(text: object, prefix: str) -> bytes | None:
    """Raw 32 bytes of ``prefix<64 hex>``; None for absent, zero or malformed keys."""
    if not isinstance(text, str) or not text.startswith(prefix):
        return None
    hexpart = text[len(prefix) :]
    if len(hexpart) != 64:
        return None
    try:
        raw = bytes.fromhex(hexpart)
    except ValueError:
        return None
    return None if raw == ZERO_KEY else raw


def gotime(t: datetime | None) -> str:
    if t is None:
        return "0001-01-01T00:00:00Z"
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").replace(".000000Z", "Z")


def parse_gotime(text: object) -> datetime | None:
    """A Go time string; None for the zero time or garbage."""
    if not isinstance(text, str) or text.startswith("0001-01-01"):
        return None
    try:
        value = text.replace("Z", "+00:00")
        # Go may send nanoseconds; Python takes at most microseconds.
        if "." in value:
            head, _, rest = value.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            zone = rest[len(digits) :]
            value = f"{head}.{digits[:6]}{zone}"
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# What a peer's netmap carries of a node's Hostinfo: the fields Tailscale clients read from
# their peers (names, OS and version for status and Taildrop, peerapi ports in Services, SSH
# host keys, location and app-connector role for exit-node and app choices). Never the node's
# own network measurements (NetInfo, which also changes often), its log IDs, push token,
# requested tags, TPM or MACs: less to send on every change, nothing private relayed.
PEER_HOSTINFO_FIELDS = frozenset({
    "IPNVersion", "OS", "OSVersion", "Container", "Env", "Distro", "DistroVersion",
    "DistroCodeName", "App", "Desktop", "Package", "DeviceModel", "Hostname", "ShieldsUp",
    "ShareeNode", "WireIngress", "IngressEnabled", "AllowsUpdate", "Machine", "GoArch",
    "GoArchVar", "GoVersion", "RoutableIPs", "Services", "sshHostKeys", "Cloud", "Userspace",
    "UserspaceRouter", "AppConnector", "Location",
})


def peer_hostinfo(hostinfo: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hostinfo.items() if k in PEER_HOSTINFO_FIELDS}
