"""The admin API's JSON shapes of users, pre-auth keys and nodes: headscale's CLI JSON with
camelCase keys, built from meshscale's records. Used by the admin routes (``admin.py``) and by
the plugins' read-only node view (``ServerContext.nodes``)."""

from __future__ import annotations

from typing import Any

from meshscale import auth, tailcfg
from meshscale.state.models import Node, PreAuthKey, User


def _time(t: Any) -> str | None:
    return tailcfg.gotime(t) if t is not None else None


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "displayName": u.display_name,
        "email": u.email,
        "providerId": u.provider_id,
        "profilePicUrl": u.picture,
        "groups": list(u.groups),
        "provider": u.provider,
        "createdAt": _time(u.created_at),
    }


def key_view(k: PreAuthKey, user: User | None) -> dict[str, Any]:
    return {
        "id": k.id,
        "key": auth.masked_key(k.key_form, k.prefix),  # the secret is shown once, at creation
        "user": user_view(user) if user else None,
        "reusable": k.reusable, "ephemeral": k.ephemeral, "used": k.used,
        "expiration": _time(k.expiration), "createdAt": _time(k.created_at),
        "aclTags": list(k.tags),
        "preauthorized": k.preauthorized,  # its nodes skip device approval
    }


def node_view(n: Node, user: User | None) -> dict[str, Any]:
    return {
        "id": n.id,
        "machineKey": tailcfg.mkey(n.machine_key),
        "nodeKey": tailcfg.nodekey(n.node_key),
        "discoKey": tailcfg.discokey(n.disco_key),
        "ipAddresses": list(n.addresses),
        "name": n.hostname,
        "givenName": n.given_name,
        "user": user_view(user) if user else None,
        "online": n.online,
        "lastSeen": _time(n.last_seen),
        "expiry": _time(n.expiry),
        "expired": n.expired(),
        "createdAt": _time(n.created_at),
        "registerMethod": n.register_method,
        "ephemeral": n.ephemeral,
        "tags": list(n.tags),
        "approvedRoutes": list(n.approved_routes),
        "availableRoutes": list(n.routable_ips),
        "approved": n.approved,  # False: waits for `nodes approve` (node.approval: manual)
    }
