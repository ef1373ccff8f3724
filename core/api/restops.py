"""The operations of /api/v1 (see meshscale.api.rest for the table that routes to them).

Each reads its input from a ``Call``, changes things only through the node lifecycle, state
and the API keys (as the admin socket does) and answers headscale's response message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from meshscale.api import restviews as v
from meshscale.api.resttypes import Call
from meshscale.clientinput.hostinfo import check_hostinfo
from meshscale.errors import MeshscaleError, NotFoundError
from meshscale.policy import check_admin_tags
from meshscale.state.models import Node, PreAuthKey, User

if TYPE_CHECKING:
    from meshscale.state.lifecycle import NodeLifecycle
    from meshscale.state.store import State


def _state(c: Call) -> State:
    assert c.server.state is not None
    return c.server.state


def _lifecycle(c: Call) -> NodeLifecycle:
    assert c.server.lifecycle is not None
    return c.server.lifecycle


def _owner(c: Call, user_id: int | None) -> User | None:
    return _state(c).owner(user_id)


def _node(c: Call, n: Node) -> dict[str, Any]:
    st = _state(c)
    return v.node(n, _owner(c, n.user_id), list(st.policy_node(n).approved_routes),
                  list(st.routes.primaries.get(n.id, [])))


def _node_id(c: Call) -> int:
    node_id = v.uint64(c.path.get("node_id"), "node_id")
    assert node_id is not None
    return node_id


def _key(c: Call, k: PreAuthKey, full: str | None = None) -> dict[str, Any]:
    return v.preauthkey(k, _owner(c, k.user_id), full)


# -- users --------------------------------------------------------------------------------------


async def list_users(c: Call) -> dict[str, Any]:
    uid = v.uint64(c.query.get("id"), "id", required=False)
    name, email = c.query.get("name") or None, c.query.get("email") or None
    users = [u for _, u in sorted(_state(c).users.items())
             if (uid is None or u.id == uid) and (name is None or u.name == name)
             and (email is None or u.email == email)]
    return {"users": [v.user(u) for u in users]}


async def create_user(c: Call) -> dict[str, Any]:
    u = _lifecycle(c).create_user(str(c.body.get("name") or ""),
                                  display_name=str(c.body.get("displayName") or ""),
                                  email=str(c.body.get("email") or ""))
    return {"user": v.user(u)}


def _user(c: Call, ref: object) -> User:
    """A user by id, or by name as headscale up to v0.23 took it (clients written then, such as
    hsapi-client, still send names)."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return _state(c).user(ref)
    if not isinstance(ref, str) or not ref:
        raise MeshscaleError("missing user")
    return _state(c).user(int(ref) if ref.isdigit() else ref)


async def rename_user(c: Call) -> dict[str, Any]:
    u = _user(c, c.path.get("old_id"))
    return {"user": v.user(_lifecycle(c).rename_user(u.id, c.path.get("new_name", "")))}


async def delete_user(c: Call) -> dict[str, Any]:
    _lifecycle(c).delete_user(_user(c, c.path.get("id")).id)
    return {}


# -- pre-auth keys ------------------------------------------------------------------------------


async def list_preauthkeys(c: Call) -> dict[str, Any]:
    uid = _user(c, c.query["user"]).id if c.query.get("user") else None
    keys = [k for _, k in sorted(_state(c).keys.items()) if uid is None or k.user_id == uid]
    return {"preAuthKeys": [_key(c, k) for k in keys]}


async def create_preauthkey(c: Call) -> dict[str, Any]:
    st = _state(c)
    user = _user(c, c.body["user"]) if c.body.get("user") else None
    expiration = v.timestamp(c.body.get("expiration"), "expiration")
    tags = v.string_list(c.body.get("aclTags"), "aclTags")
    preauthorized = v.json_bool(c.body.get("preauthorized"), "preauthorized")  # meshscale's
    if tags and user is not None and not c.server.engine.tags_permitted(
            st.policy_user(user), tags):
        raise MeshscaleError(f"user {user.name!r} may not own tags {tags} (tagOwners)")
    lifetime = None
    if expiration is not None:
        lifetime = expiration - datetime.now(UTC)
        if lifetime.total_seconds() <= 0:
            raise MeshscaleError("expiration must be in the future")
    key, full = st.create_key(user, reusable=bool(c.body.get("reusable")),
                              ephemeral=bool(c.body.get("ephemeral")),
                              expiration=lifetime, tags=tags, preauthorized=preauthorized)
    return {"preAuthKey": _key(c, key, full)}


def _find_key(c: Call, where: Any) -> PreAuthKey:
    kid = v.uint64(where.get("id"), "id", required=False)
    if kid:
        return _state(c).find_key(kid)
    if where.get("key"):
        return _state(c).find_key(str(where["key"]))
    raise MeshscaleError("missing id")


async def expire_preauthkey(c: Call) -> dict[str, Any]:
    _state(c).expire_key(_find_key(c, c.body).id)
    return {}


async def delete_preauthkey(c: Call) -> dict[str, Any]:
    _state(c).delete_key(_find_key(c, c.query).id)
    return {}


# -- nodes --------------------------------------------------------------------------------------


async def list_nodes(c: Call) -> dict[str, Any]:
    st = _state(c)
    wanted = c.query.get("user")
    uid = st.user(wanted).id if wanted else None
    nodes = [_node(c, n) for n in st.nodes_sorted() if uid is None or n.user_id == uid]
    return {"nodes": [{**n, "user": v.TAGGED_DEVICES} if n["tags"] else n for n in nodes]}


async def get_node(c: Call) -> dict[str, Any]:
    return {"node": _node(c, _state(c).node(_node_id(c)))}


async def delete_node(c: Call) -> dict[str, Any]:
    _lifecycle(c).delete(_node_id(c), "deleted through the API")
    return {}


async def expire_node(c: Call) -> dict[str, Any]:
    node_id = _node_id(c)
    disable = v.boolean(c.query.get("disableExpiry", c.query.get("disable_expiry")),
                        "disableExpiry")
    when = v.timestamp(c.query.get("expiry"), "expiry")
    if disable and when is not None:
        raise MeshscaleError("cannot set both disable_expiry and expiry")
    if disable:
        return {"node": _node(c, _lifecycle(c).never_expire(node_id))}
    n = _lifecycle(c).expire(node_id, when, why="expired through the API")
    return {"node": _node(c, n)}


async def set_tags(c: Call) -> dict[str, Any]:
    """headscale's SetTags (v0.29.2): at least one tag, each well formed and defined in the
    policy's tagOwners; the node must exist. Through the lifecycle, so peers follow."""
    node_id = _node_id(c)
    tags = v.string_list(c.body.get("tags"), "tags")
    if not tags:
        raise MeshscaleError("cannot remove all tags from a node - tagged nodes must have at "
                             "least one tag")
    _state(c).node(node_id)  # not found before a refused tag, as headscale answers
    check_admin_tags(c.server.engine, tags)
    return {"node": _node(c, _lifecycle(c).set_tags(node_id, tags))}


async def backfill_ips(c: Call) -> dict[str, Any]:
    """headscale's BackfillNodeIPs: only with ?confirmed=true; a line per address given."""
    if not v.boolean(c.query.get("confirmed"), "confirmed"):
        raise MeshscaleError("not confirmed, aborting: add ?confirmed=true")
    return {"changes": _lifecycle(c).backfill_addresses()}


async def debug_create_node(c: Call) -> dict[str, Any]:
    """headscale's DebugCreateNode (v0.29.2): a login waiting under auth id ``key`` for a node
    named ``name`` announcing ``routes``, owned by ``user`` (a name) once registered; the
    answer echoes that node, not yet registered (id 0). ``auth register`` (or RegisterNode)
    with the same auth id creates it."""
    plane = c.server.plane
    assert plane is not None
    user = _state(c).user(str(c.body.get("user") or "")) if c.body.get("user") else None
    if user is None:
        raise MeshscaleError("missing user")
    name = c.body.get("name") or ""
    if not isinstance(name, str):
        raise MeshscaleError("name must be a string")
    routes = v.string_list(c.body.get("routes"), "routes")
    hostinfo, problems = check_hostinfo({"Hostname": name, "OS": "TestOS",
                                         "RoutableIPs": routes},
                                        c.server.config.client_limits.hostinfo_max_bytes,
                                        "node")
    if problems:
        raise MeshscaleError(problems.summary())
    pending = plane.logins.pending.start_debug(str(c.body.get("key") or ""), hostinfo)
    echo = Node(id=0, machine_key=pending.machine_key, node_key=pending.node_key,
                hostname=name, given_name="", user_id=user.id, ipv4=None, ipv6=None,
                hostinfo=hostinfo, created_at=datetime.now(UTC), register_method="")
    return {"node": v.node(echo, user, [], [])}


async def rename_node(c: Call) -> dict[str, Any]:
    n = _lifecycle(c).rename(_node_id(c), c.path.get("new_name", ""))
    return {"node": _node(c, n)}


async def approve_routes(c: Call) -> dict[str, Any]:
    routes = v.string_list(c.body.get("routes"), "routes")
    return {"node": _node(c, _lifecycle(c).approve_routes(_node_id(c), routes))}


async def approve_node(c: Call) -> dict[str, Any]:
    return {"node": _node(c, _lifecycle(c).approve(_node_id(c), by="the API"))}


async def unapprove_node(c: Call) -> dict[str, Any]:
    return {"node": _node(c, _lifecycle(c).unapprove(_node_id(c), by="the API"))}


def _register(c: Call, user_ref: str, auth_id: str) -> dict[str, Any]:
    plane = c.server.plane
    assert plane is not None
    user = _state(c).user(user_ref)
    return {"node": _node(c, plane.logins.register(auth_id, user))}


async def register_node(c: Call) -> dict[str, Any]:
    return _register(c, c.query.get("user", ""), c.query.get("key", ""))


async def auth_register(c: Call) -> dict[str, Any]:
    return _register(c, str(c.body.get("user") or ""), str(c.body.get("authId") or ""))


async def auth_approve(c: Call) -> dict[str, Any]:
    plane = c.server.plane
    assert plane is not None
    plane.checks.approve(str(c.body.get("authId") or ""), None)
    return {}


async def auth_reject(c: Call) -> dict[str, Any]:
    plane = c.server.plane
    assert plane is not None
    plane.logins.reject(str(c.body.get("authId") or ""))
    return {}


# -- API keys -----------------------------------------------------------------------------------


def _apikeys(c: Call) -> Any:
    assert c.server.apikeys is not None
    return c.server.apikeys


async def list_apikeys(c: Call) -> dict[str, Any]:
    return {"apiKeys": [v.apikey(k) for _, k in sorted(_apikeys(c).keys.items())]}


async def create_apikey(c: Call) -> dict[str, Any]:
    when = v.timestamp(c.body.get("expiration"), "expiration")
    # Without an expiration headscale's CLI asks for 90 days; the API default is the same.
    lifetime = timedelta(days=90) if when is None else when - datetime.now(UTC)
    _, full = _apikeys(c).create(lifetime)
    return {"apiKey": full}


def _apikey_ref(c: Call, where: Any) -> str:
    kid = v.uint64(where.get("id"), "id", required=False)
    return str(kid) if kid else str(where.get("prefix") or "")


async def expire_apikey(c: Call) -> dict[str, Any]:
    _apikeys(c).expire(_apikey_ref(c, c.body))
    return {}


async def delete_apikey(c: Call) -> dict[str, Any]:
    ref = _apikey_ref(c, c.query) if c.query.get("id") else c.path.get("prefix", "")
    _apikeys(c).delete(ref)
    return {}


# -- policy and health --------------------------------------------------------------------------


async def get_policy(c: Call) -> dict[str, Any]:
    if c.server.policy_text is None:
        raise NotFoundError("no policy is set")
    return {"policy": c.server.policy_text}


async def set_policy(c: Call) -> dict[str, Any]:
    if c.server.config.policy.mode != "database":
        raise MeshscaleError("policy.mode is 'file': edit the policy file and send SIGHUP")
    text = c.body.get("policy")
    if not isinstance(text, str):
        raise MeshscaleError("missing policy")
    c.server.set_policy(text, "database", persist=True)
    return {"policy": text, "updatedAt": v.ts(datetime.now(UTC))}


async def check_policy(c: Call) -> dict[str, Any]:
    users, nodes = _state(c).policy_topology()
    c.server.engine.check(str(c.body.get("policy") or ""), users, nodes)
    return {}


async def health(c: Call) -> dict[str, Any]:
    return {"databaseConnectivity": getattr(c.server.storage, "available", True)
            if hasattr(c.server, "storage") else True}
