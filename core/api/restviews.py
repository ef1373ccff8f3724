"""headscale's API messages as proto3 JSON (lowerCamelCase names, uint64 ids as strings,
timestamps in RFC 3339), built from meshscale's records. headscale v0.29.2 is the reference."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from meshscale import auth, tailcfg
from meshscale.errors import MeshscaleError
from meshscale.state.models import ApiKey, Node, PreAuthKey, User

_METHODS = {"authkey": "REGISTER_METHOD_AUTH_KEY", "cli": "REGISTER_METHOD_CLI",
            "oidc": "REGISTER_METHOD_OIDC"}


def ts(t: datetime | None) -> str | None:
    return tailcfg.gotime(t) if t is not None else None


def user(u: User | None) -> dict[str, Any] | None:
    if u is None:
        return None
    return {"id": str(u.id), "name": u.name, "createdAt": ts(u.created_at),
            "displayName": u.display_name, "email": u.email, "providerId": u.provider_id,
            "provider": u.provider, "profilePicUrl": u.picture}


# headscale's ListNodes (hscontrol/grpcv1.go nodesToProto) shows a tagged node as owned by the
# tagged-devices pseudo-user (a zero creation time), whoever registered it.
TAGGED_DEVICES: dict[str, Any] = {
    "id": str(tailcfg.TAGGED_USER_ID), "name": tailcfg.TAGGED_USER["LoginName"],
    "createdAt": "0001-01-01T00:00:00Z", "displayName": tailcfg.TAGGED_USER["DisplayName"],
    "email": "", "providerId": "", "provider": "", "profilePicUrl": "",
}


def preauthkey(k: PreAuthKey, owner: User | None, full: str | None = None) -> dict[str, Any]:
    return {"user": user(owner), "id": str(k.id),
            "key": full or auth.masked_key(k.key_form, k.prefix),
            "reusable": k.reusable, "ephemeral": k.ephemeral, "used": k.used,
            "expiration": ts(k.expiration), "createdAt": ts(k.created_at),
            "aclTags": list(k.tags)}


def node(n: Node, owner: User | None, approved: list[str], primary: list[str]) -> dict[str, Any]:
    return {
        "id": str(n.id), "machineKey": tailcfg.mkey(n.machine_key),
        "nodeKey": tailcfg.nodekey(n.node_key), "discoKey": tailcfg.discokey(n.disco_key),
        "ipAddresses": list(n.addresses), "name": n.hostname, "user": user(owner),
        "lastSeen": ts(n.last_seen), "expiry": ts(n.expiry), "createdAt": ts(n.created_at),
        "registerMethod": _METHODS.get(n.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": n.given_name, "online": n.online, "approvedRoutes": approved,
        "availableRoutes": list(n.routable_ips), "subnetRoutes": primary, "tags": list(n.tags),
    }


def apikey(k: ApiKey) -> dict[str, Any]:
    return {"id": str(k.id), "prefix": auth.masked_key(k.key_form, k.prefix),
            "expiration": ts(k.expiration),
            "createdAt": ts(k.created_at), "lastSeen": ts(k.last_seen)}


# -- reading proto3 JSON ------------------------------------------------------------------------


def uint64(value: object, name: str, required: bool = True) -> int | None:
    """A uint64 field: proto3 JSON writes it as a string, and accepts a number."""
    if value is None or value == "":
        if required:
            raise MeshscaleError(f"missing {name}")
        return None
    if isinstance(value, bool):
        raise MeshscaleError(f"{name} must be an unsigned integer")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    raise MeshscaleError(f"{name} must be an unsigned integer, got {str(value)[:40]!r}")


def timestamp(value: object, name: str) -> datetime | None:
    """A google.protobuf.Timestamp in RFC 3339 (None when absent)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    raise MeshscaleError(f"{name} must be an RFC 3339 time such as 2030-01-01T00:00:00Z")


def string_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MeshscaleError(f"{name} must be a list of strings")
    return list(value)


def json_bool(value: object, name: str) -> bool:
    """A bool in a JSON body: true, false or absent (false); nothing else."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MeshscaleError(f"{name} must be true or false")
    return value


def boolean(value: object, name: str) -> bool:
    """A bool query parameter as grpc-gateway reads one (Go's strconv.ParseBool)."""
    if value is None or value == "" or value is False:
        return False
    if value is True:
        return True
    text = str(value)
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise MeshscaleError(f"{name} must be true or false, got {text[:20]!r}")
