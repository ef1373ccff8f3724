"""``-o json | json-line | yaml`` in headscale's shapes, so scripts written for headscale's CLI
read meshscale's output unchanged.

headscale prints its protobuf messages with Go's encoding/json (cmd/headscale/cli/utils.go): the
field names are the proto names (``ip_addresses``, ``given_name``, ``created_at``), ids are JSON
numbers, times are ``{"seconds": N, "nanos": N}`` and ``register_method`` is the enum's number.
Its YAML (yaml.v3 on the same structs) names fields by the lower-cased Go name (``ipaddresses``).
headscale leaves out empty fields; meshscale prints every field (``online: false`` rather than
nothing), which a reader of headscale's output also accepts, plus a few of its own (nodes'
``expired``, ``ephemeral`` and ``approved``, keys' ``preauthorized``, users' ``groups``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import yaml

# headscale's RegisterMethod enum (proto/headscale/v1/node.proto).
REGISTER_METHODS = {"authkey": 1, "cli": 2, "oidc": 3}


def timestamp(text: object) -> dict[str, int] | None:
    """A Go time string from the admin API as google.protobuf.Timestamp's Go struct."""
    if not isinstance(text, str) or text.startswith("0001-01-01"):
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return {"seconds": int(when.timestamp()), "nanos": when.microsecond * 1000}


def user(u: dict[str, Any] | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {
        "id": u["id"],
        "name": u.get("name", ""),
        "created_at": timestamp(u.get("createdAt")),
        "display_name": u.get("displayName", ""),
        "email": u.get("email", ""),
        "provider_id": u.get("providerId", ""),
        "provider": u.get("provider", ""),
        "profile_pic_url": u.get("profilePicUrl", ""),
        "groups": list(u.get("groups", [])),  # meshscale's: the login provider's groups claim
    }


def node(n: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": n["id"],
        "machine_key": n.get("machineKey", ""),
        "node_key": n.get("nodeKey", ""),
        "disco_key": n.get("discoKey", ""),
        "ip_addresses": list(n.get("ipAddresses", [])),
        "name": n.get("name", ""),
        "user": user(n.get("user")),
        "last_seen": timestamp(n.get("lastSeen")),
        "expiry": timestamp(n.get("expiry")),
        "created_at": timestamp(n.get("createdAt")),
        "register_method": REGISTER_METHODS.get(str(n.get("registerMethod")), 0),
        "given_name": n.get("givenName", ""),
        "online": bool(n.get("online")),
        "approved_routes": list(n.get("approvedRoutes", [])),
        "available_routes": list(n.get("availableRoutes", [])),
        "subnet_routes": list(n.get("subnetRoutes", [])),
        "tags": list(n.get("tags", [])),
        "expired": bool(n.get("expired")),
        "ephemeral": bool(n.get("ephemeral")),
        "approved": bool(n.get("approved", True)),  # meshscale's device approval
    }


def preauthkey(k: dict[str, Any]) -> dict[str, Any]:
    return {
        "user": user(k.get("user")),
        "id": k["id"],
        "key": k.get("key", ""),
        "reusable": bool(k.get("reusable")),
        "ephemeral": bool(k.get("ephemeral")),
        "used": bool(k.get("used")),
        "expiration": timestamp(k.get("expiration")),
        "created_at": timestamp(k.get("createdAt")),
        "acl_tags": list(k.get("aclTags", [])),
        "preauthorized": bool(k.get("preauthorized")),  # meshscale's pre-approved keys
    }


def apikey(k: dict[str, Any]) -> dict[str, Any]:
    out = {
        "id": k["id"],
        "prefix": k.get("prefix", ""),
        "expiration": timestamp(k.get("expiration")),
        "created_at": timestamp(k.get("createdAt")),
        "last_seen": timestamp(k.get("lastSeen")),
    }
    if "key" in k:  # at creation only: the whole key, shown once
        out["key"] = k["key"]
    return out


SHAPES: dict[str, Callable[[Any], Any]] = {"user": user, "node": node, "preauthkey": preauthkey,
                                           "apikey": apikey}


def shape(data: Any, kind: str | None) -> Any:
    """The admin API's answer in headscale's shape (a list stays a list)."""
    fn = SHAPES.get(kind or "")
    if fn is None:
        return data
    return [fn(x) for x in data] if isinstance(data, list) else fn(data)


def _yaml_names(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k).replace("_", ""): _yaml_names(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_yaml_names(x) for x in data]
    return data


def render(data: Any, fmt: str, go_names: bool = True) -> str:
    """json (tab-indented, as headscale), json-line (one line) or yaml; ``go_names``: the
    data is one of headscale's messages, whose YAML names are yaml.v3's (``ipaddresses``)."""
    if fmt == "json":
        return json.dumps(data, indent="\t")
    if fmt == "json-line":
        return json.dumps(data, separators=(",", ":"))
    return yaml.safe_dump(_yaml_names(data) if go_names else data, sort_keys=False).rstrip()
