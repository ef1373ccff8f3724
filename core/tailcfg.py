"""Wire types: tailcfg JSON built from state (Node, UserProfile, DNSConfig, RegisterResponse).

Field names are Go's exactly. Key fields are never ``""`` (the Go client rejects the whole message);
times are RFC 3339 with a zone (protocol.md §1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from meshscale.config import Config
from meshscale.state.models import Node, User

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


def fqdn(node: Node, config: Config) -> str:
    if config.dns.base_domain:
        return f"{node.given_name}.{config.dns.base_domain}."
    return node.given_name


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


def node_json(
    node: Node,
    config: Config,
    allowed_ips: Sequence[str] | None = None,
    primary_routes: Sequence[str] = (),
    cap_map: Mapping[str, Any] | None = None,
    self_view: bool = False,
) -> dict[str, Any]:
    addresses = node.prefixes
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": str(node.id),
        "Name": fqdn(node, config),
        "User": node.user_id if node.user_id is not None else TAGGED_USER_ID,
        "Key": nodekey(node.node_key),
        "Machine": mkey(node.machine_key),
        "DiscoKey": discokey(node.disco_key),
        "Addresses": addresses,
        "AllowedIPs": list(allowed_ips) if allowed_ips is not None else addresses,
        "Endpoints": list(node.endpoints),
        "HomeDERP": node.home_derp,
        "Hostinfo": dict(node.hostinfo) if self_view else peer_hostinfo(node.hostinfo),
        "Created": gotime(node.created_at),
        "Cap": node.capver,
        "MachineAuthorized": True,
        "Online": node.online,
    }
    if node.home_derp:
        out["DERP"] = f"127.3.3.40:{node.home_derp}"
    if node.expiry is not None:
        out["KeyExpiry"] = gotime(node.expiry)
        if node.expired():
            out["Expired"] = True
    if node.tags:
        out["Tags"] = list(node.tags)
    if primary_routes:
        out["PrimaryRoutes"] = list(primary_routes)
    if node.last_seen is not None and not node.online:
        out["LastSeen"] = gotime(node.last_seen)
    if cap_map:
        out["CapMap"] = dict(cap_map)
    return out


def user_profile(user: User) -> dict[str, Any]:
    return {
        "ID": user.id,
        "LoginName": user.login_name,
        "DisplayName": user.display_name or user.name,
    }


def register_user(user: User | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(User, Login) objects of a RegisterResponse."""
    if user is None:
        return (
            {"ID": TAGGED_USER_ID, "DisplayName": TAGGED_USER["DisplayName"]},
            {
                "ID": TAGGED_USER_ID,
                "Provider": "meshscale",
                "LoginName": TAGGED_USER["LoginName"],
                "DisplayName": TAGGED_USER["DisplayName"],
            },
        )
    return (
        {"ID": user.id, "DisplayName": user.display_name or user.name,
         "Created": gotime(user.created_at)},
        {
            "ID": user.id,
            "Provider": user.provider or "meshscale",
            "LoginName": user.login_name,
            "DisplayName": user.display_name or user.name,
        },
    )


def dns_config(config: Config) -> dict[str, Any]:
    dns = config.dns
    resolvers = [{"Addr": a} for a in dns.nameservers.global_]
    domains = list(dns.search_domains)
    out: dict[str, Any] = {"Proxied": dns.magic_dns}
    if dns.magic_dns and dns.base_domain:
        domains.insert(0, dns.base_domain)
    if dns.override_local_dns:
        out["Resolvers"] = resolvers
    else:
        out["FallbackResolvers"] = resolvers
    routes: dict[str, Any] = {
        f"{suffix}.": [{"Addr": a} for a in servers]
        for suffix, servers in dns.nameservers.split.items()
    }
    if routes:
        out["Routes"] = routes
    if domains:
        out["Domains"] = domains
    if dns.extra_records:
        out["ExtraRecords"] = [
            {"Name": r.name, "Type": r.type, "Value": r.value} for r in dns.extra_records
        ]
    return out
