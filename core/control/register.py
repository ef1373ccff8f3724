"""``/machine/register``: auth-key login, refresh, key rotation, logout, expiry (protocol.md §6).

Identity is the Noise session's machine key. A node key in the body is only a claim: it is used
only together with that machine key.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshscale import audit, tailcfg
from meshscale.clientinput import RegisterRequest
from meshscale.errors import AuthError, MeshscaleError, StorageError
from meshscale.events import NodeEvent, NodeEventKind, Registration
from meshscale.state.models import Node, User, utcnow

if TYPE_CHECKING:
    from meshscale.control.plane import ControlPlane

log = logging.getLogger(__name__)

# tailcfg.CheckTag: "tag:", a letter, then letters, digits and dashes.
_TAG = re.compile(r"tag:[A-Za-z][A-Za-z0-9-]*")
# The Go client logs out by sending this far-past expiry (Unix 123).
LOGOUT_BEFORE = datetime(1971, 1, 1, tzinfo=UTC)


class RegisterRefused(MeshscaleError):
    """Becomes RegisterResponse.Error: the client shows it to the user."""


def _response(user: User | None, node: Node | None, **extra: Any) -> dict[str, Any]:
    u, login = tailcfg.register_user(user)
    out: dict[str, Any] = {
        "User": u,
        "Login": login,
        "MachineAuthorized": node is not None and not node.expired(),
        "NodeKeyExpired": node is not None and node.expired(),
    }
    out.update(extra)
    return out


def handle_register(
    plane: ControlPlane, machine_key: bytes, req: RegisterRequest
) -> dict[str, Any]:
    started = time.monotonic()
    method = _claimed_method(req)
    try:
        method, resp = _register(plane, machine_key, req)
        plane.host.hooks.registration(Registration(method, "ok", time.monotonic() - started))
        return resp
    except (RegisterRefused, AuthError) as exc:
        plane.host.hooks.registration(
            Registration(method, "refused", time.monotonic() - started, str(exc)))
        return {"Error": str(exc)}
    except StorageError as exc:
        # Not stored, so not registered: the client is told and retries later.
        log.error("registration not stored: %s", exc)
        plane.host.hooks.registration(
            Registration(method, "error", time.monotonic() - started, str(exc)))
        return {"Error": f"the server cannot store the registration right now: {exc}"}


def _claimed_method(req: RegisterRequest) -> str:
    """What the request asks for, so even an early refusal is counted under its method."""
    if req.expiry is not None:
        return "logout" if req.expiry < LOGOUT_BEFORE or req.expiry <= utcnow() else "expiry"
    if req.auth_key:
        return "authkey"
    if req.old_node_key is not None:
        return "rotate"
    return "refresh"


def _register(
    plane: ControlPlane, machine_key: bytes, req: RegisterRequest
) -> tuple[str, dict[str, Any]]:
    state = plane.state
    if (too_old := tailcfg.too_old(req.version)) is not None:
        raise RegisterRefused(too_old)
    node_key = req.node_key
    if node_key is None:
        raise RegisterRefused("missing or malformed NodeKey")
    old_key = req.old_node_key
    hostinfo = req.hostinfo
    expiry = req.expiry
    auth_key = req.auth_key

    by_key = state.by_node_key(node_key)
    if by_key is not None and by_key.machine_key != machine_key:
        # Someone else's node key: never let a body claim take over another machine's node.
        raise AuthError("node key is registered to a different machine")
    mine = state.by_machine_key(machine_key)

    # Logout, or a request to shorten the key's life.
    if expiry is not None:
        node = by_key or mine
        if node is None:
            raise RegisterRefused("no node is registered for this machine")
        if expiry < LOGOUT_BEFORE or expiry <= utcnow():
            if node.ephemeral:
                plane.delete_node(node.id)
                audit.node_line(state, node, "logged out (ephemeral: deleted)")
                return "logout", _response(None, None, NodeKeyExpired=True)
            node = plane.expire_node(node.id)
            audit.node_line(state, node, "logged out")
            return "logout", _response(_owner(plane, node), node)
        if node.expiry is not None and expiry > node.expiry:
            raise RegisterRefused("extending key is not allowed")
        node = plane.expire_node(node.id, when=expiry)
        return "expiry", _response(_owner(plane, node), node)

    # Key rotation: the old key must be this machine's.
    if old_key is not None and mine is not None and mine.node_key == old_key:
        if mine.expired() and not auth_key:
            raise RegisterRefused("node key expired: log in again with an auth key")
        if auth_key:
            return "rotate", _with_auth_key(plane, machine_key, node_key, hostinfo, auth_key, req)
        node = state.rotate_node_key(mine, node_key)
        return "rotate", _response(_owner(plane, node), node)

    # Refresh: this machine already has this node key.
    if by_key is not None:
        if by_key.expired():
            if auth_key:
                return "authkey", _with_auth_key(
                    plane, machine_key, node_key, hostinfo, auth_key, req
                )
            return "refresh", _response(_owner(plane, by_key), by_key)
        return "refresh", _response(_owner(plane, by_key), by_key)

    if auth_key:
        return "authkey", _with_auth_key(plane, machine_key, node_key, hostinfo, auth_key, req)
    raise RegisterRefused(
        "this meshscale server needs a pre-auth key: tailscale up --login-server ... "
        "--authkey <key from 'meshscale preauthkeys create'>"
    )


def _owner(plane: ControlPlane, node: Node) -> User | None:
    return plane.state.users.get(node.user_id) if node.user_id is not None else None


def _with_auth_key(
    plane: ControlPlane,
    machine_key: bytes,
    node_key: bytes,
    hostinfo: dict[str, Any],
    auth_key: str,
    req: RegisterRequest,
) -> dict[str, Any]:
    state = plane.state
    key = state.check_auth_key(auth_key)
    user = state.users.get(key.user_id) if key.user_id is not None else None
    tags = _permitted_tags(plane, user, list(key.tags), hostinfo)
    hostname = str(hostinfo.get("Hostname") or "node")
    veto = plane.host.hooks.admit_node(hostname, user.name if user else None, tuple(tags),
                                       "authkey")
    if veto:
        raise RegisterRefused(f"registration refused: {veto}")
    capver = req.version
    existed = state.by_machine_key(machine_key) is not None
    node = state.register_with_key(key, machine_key, node_key, hostinfo, tags, capver)
    plane.node_event(NodeEventKind.UPDATED if existed else NodeEventKind.REGISTERED, node)
    audit.node_line(state, node, "logged in again" if existed else "registered")
    return _response(user, node)


def _permitted_tags(
    plane: ControlPlane, user: User | None, key_tags: list[str], hostinfo: dict[str, Any]
) -> list[str]:
    """The tags the node gets: the key's, else Hostinfo.RequestTags; either way tagOwners of
    the policy in force must allow them (the policy may have changed since the key was made)."""
    owner = plane.state.policy_user(user) if user else None
    if key_tags:
        if not plane.engine.tags_permitted(owner, key_tags):
            raise RegisterRefused(
                f"the pre-auth key's tags {sorted(key_tags)} are not permitted by the policy "
                "(tagOwners)"
            )
        return key_tags
    requested = [t for t in (hostinfo.get("RequestTags") or []) if isinstance(t, str)]
    if not requested:
        return []
    bad = [t for t in requested if not _TAG.fullmatch(t)]
    if bad:
        raise RegisterRefused(f"requested tags {sorted(bad)} are invalid: tags look like tag:name")
    if not plane.policy_loaded():
        # No policy, no tagOwners: nobody may claim a tag (as headscale). Accepting it would
        # let the node shed its owner now and gain the tag's access once a policy arrives.
        raise RegisterRefused(
            f"requested tags {sorted(requested)} are refused: no policy is loaded, so no "
            "tagOwners allow them; use a pre-auth key made with --tags, or load a policy"
        )
    if not plane.engine.tags_permitted(owner, requested):
        who = f"user {user.name!r}" if user else "this key"
        raise RegisterRefused(
            f"requested tags {sorted(requested)} are not permitted for {who} (tagOwners)"
        )
    return list(dict.fromkeys(requested))


def node_event(plane: ControlPlane, kind: NodeEventKind, node: Node) -> NodeEvent:
    return NodeEvent(
        kind=kind,
        node_id=node.id,
        hostname=node.hostname,
        given_name=node.given_name,
        user=plane.state.owner_name(node),
        tags=tuple(node.tags),
        addresses=node.addresses,
    )
