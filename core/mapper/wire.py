"""tailcfg JSON built from state: a Node as peers and itself see it, UserProfile.

DNSConfig is meshscale.dns.render's.

The vocabulary (key and time spellings, the tagged-devices user) is meshscale.tailcfg's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshscale.config import Config
from meshscale.state.models import Node, User
from meshscale.tailcfg import (
    TAGGED_USER_ID,
    discokey,
    gotime,
    mkey,
    nodekey,
    peer_hostinfo,
)


def fqdn(node: Node, config: Config) -> str:
    if config.dns.base_domain:
        return f"{node.given_name}.{config.dns.base_domain}."
    return node.given_name


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
        # False only in a waiting node's own map (peers are approved): the client shows
        # "Machine is not yet approved by tailnet admin" (ipn state NeedsMachineAuth).
        "MachineAuthorized": node.approved,
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
