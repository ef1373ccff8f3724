"""``/machine/register``: auth-key login, refresh, key rotation, logout, expiry (protocol.md §6).

Identity is the Noise session's machine key. A node key in the body is only a claim: it is used
only together with that machine key.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshscale import tailcfg
from meshscale.clientinput import RegisterRequest
from meshscale.errors import AuthError, MeshscaleError, StorageError
from meshscale.events import Registration
from meshscale.state.models import Node, User, utcnow

if TYPE_CHECKING:
    from meshscale.hookcalls import HookCalls
    from meshscale.policy import PolicyEngine
    from meshscale.state.lifecycle import NodeLifecycle
    from meshscale.state.store import State

log = logging.getLogger(__name__)

# tailcfg.CheckTag: "tag:", a letter, then letters, digits and dashes.
_TAG = re.compile(r"tag:[A-Za-z][A-Za-z0-9-]*")
# The Go client logs out by sending this far-past expiry (Unix 123).
LOGOUT_BEFORE = datetime(1971, 1, 1, tzinfo=UTC)


class RegisterRefused(MeshscaleError):
    """Becomes RegisterResponse.Error: the client shows it to the user."""


class NeedsLogin(Exception):
    """No key and no valid node: the client logs in interactively (control/interactive.py)."""


@dataclass(frozen=True, slots=True)
class Registrar:
    """What registration needs: it reads state, and changes nodes only through the lifecycle."""

    state: State
    lifecycle: NodeLifecycle
    engine: PolicyEngine
    hooks: HookCalls
    policy_loaded: Callable[[], bool]  # is a policy (tagOwners) in force?


def _register_user(user: User | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(User, Login) objects of a RegisterResponse."""
    if user is None:
        return (
            {"ID": tailcfg.TAGGED_USER_ID, "DisplayName": tailcfg.TAGGED_USER["DisplayName"]},
            {
                "ID": tailcfg.TAGGED_USER_ID,
                "Provider": "meshscale",
                "LoginName": tailcfg.TAGGED_USER["LoginName"],
                "DisplayName": tailcfg.TAGGED_USER["DisplayName"],
            },
        )
    return (
        {"ID": user.id, "DisplayName": user.display_name or user.name,
         "Created": tailcfg.gotime(user.created_at)},
        {
            "ID": user.id,
            "Provider": user.provider or "meshscale",
            "LoginName": user.login_name,
            "DisplayName": user.display_name or user.name,
        },
    )


def _response(user: User | None, node: Node | None, **extra: Any) -> dict[str, Any]:
    u, login = _register_user(user)
    out: dict[str, Any] = {
        "User": u,
        "Login": login,
        # False for a node awaiting approval: its map says so too (node.approval: manual).
        "MachineAuthorized": node is not None and node.approved and not node.expired(),
        "NodeKeyExpired": node is not None and node.expired(),
    }
    out.update(extra)
    return out


def handle_register(
    reg: Registrar, machine_key: bytes, req: RegisterRequest
) -> dict[str, Any]:
    started = time.monotonic()
    method = _claimed_method(req)
    try:
        method, resp = _register(reg, machine_key, req)
        reg.hooks.registration(Registration(method, "ok", time.monotonic() - started))
        return resp
    except (RegisterRefused, AuthError) as exc:
        reg.hooks.registration(
            Registration(method, "refused", time.monotonic() - started, str(exc)))
        return {"Error": str(exc)}
    except StorageError as exc:
        # Not stored, so not registered: the client is told and retries later.
        log.error("registration not stored: %s", exc)
        reg.hooks.registration(
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
    reg: Registrar, machine_key: bytes, req: RegisterRequest
) -> tuple[str, dict[str, Any]]:
    state = reg.state
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
            out = reg.lifecycle.logout(node)
            if out is None:  # ephemeral: deleted
                return "logout", _response(None, None, NodeKeyExpired=True)
            return "logout", _response(_owner(reg, out), out)
        if node.expiry is not None and expiry > node.expiry:
            raise RegisterRefused("extending key is not allowed")
        node = reg.lifecycle.expire(node.id, when=expiry)
        return "expiry", _response(_owner(reg, node), node)

    # Key rotation: the old key must be this machine's.
    if old_key is not None and mine is not None and mine.node_key == old_key:
        if mine.expired() and not auth_key:
            raise NeedsLogin
        if auth_key:
            return "rotate", _with_auth_key(reg, machine_key, node_key, hostinfo, auth_key, req)
        node = reg.lifecycle.rotate_key(mine, node_key)
        return "rotate", _response(_owner(reg, node), node)

    # Refresh: this machine already has this node key.
    if by_key is not None:
        if by_key.expired():
            if auth_key:
                return "authkey", _with_auth_key(
                    reg, machine_key, node_key, hostinfo, auth_key, req
                )
            return "refresh", _response(_owner(reg, by_key), by_key)
        return "refresh", _response(_owner(reg, by_key), by_key)

    if auth_key:
        return "authkey", _with_auth_key(reg, machine_key, node_key, hostinfo, auth_key, req)
    raise NeedsLogin


def response_for(reg: Registrar, node: Node) -> dict[str, Any]:
    """The RegisterResponse of a node that just logged in."""
    return _response(_owner(reg, node), node)


def _owner(reg: Registrar, node: Node) -> User | None:
    return reg.state.owner(node.user_id)


def _with_auth_key(
    reg: Registrar,
    machine_key: bytes,
    node_key: bytes,
    hostinfo: dict[str, Any],
    auth_key: str,
    req: RegisterRequest,
) -> dict[str, Any]:
    state = reg.state
    key = state.check_auth_key(auth_key)
    user = state.owner(key.user_id)
    tags = permitted_tags(reg, user, list(key.tags), hostinfo)
    hostname = str(hostinfo.get("Hostname") or "node")
    veto = reg.hooks.admit_node(hostname, user.name if user else None, tuple(tags),
                                       "authkey")
    if veto:
        raise RegisterRefused(f"registration refused: {veto}")
    node = reg.lifecycle.register_with_key(key, machine_key, node_key, hostinfo, tags,
                                             req.version)
    return _response(user, node)


def permitted_tags(
    reg: Registrar, user: User | None, key_tags: list[str], hostinfo: dict[str, Any]
) -> list[str]:
    """The tags the node gets: the key's, else Hostinfo.RequestTags; either way tagOwners of
    the policy in force must allow them (the policy may have changed since the key was made)."""
    owner = reg.state.policy_user(user) if user else None
    if key_tags:
        if not reg.engine.tags_permitted(owner, key_tags):
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
    if not reg.policy_loaded():
        # No policy, no tagOwners: nobody may claim a tag (as headscale). Accepting it would
        # let the node shed its owner now and gain the tag's access once a policy arrives.
        raise RegisterRefused(
            f"requested tags {sorted(requested)} are refused: no policy is loaded, so no "
            "tagOwners allow them; use a pre-auth key made with --tags, or load a policy"
        )
    if not reg.engine.tags_permitted(owner, requested):
        who = f"user {user.name!r}" if user else "this key"
        raise RegisterRefused(
            f"requested tags {sorted(requested)} are not permitted for {who} (tagOwners)"
        )
    return list(dict.fromkeys(requested))

