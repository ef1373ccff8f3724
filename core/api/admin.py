"""The admin API: JSON over HTTP on the local unix socket, used by the CLI.

The CLI never touches the database; everything goes through the running server, so in-memory
state, storage and connected clients stay in step. Output shapes follow headscale's CLI JSON with
camelCase keys (``adminviews.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from quart import Quart, Response, request

from meshscale import tailcfg
from meshscale.api.adminviews import key_view, node_view, user_view
from meshscale.api.apikeys import add_routes as add_apikey_routes
from meshscale.api.dnsapi import add_routes as add_dns_routes
from meshscale.api.restviews import json_bool
from meshscale.errors import MeshscaleError, NotFoundError, StorageError
from meshscale.policy import check_admin_tags
from meshscale.state.models import Node, User

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.control.interactive import InteractiveLogins
    from meshscale.control.plane import ControlPlane
    from meshscale.dns.settings import DnsSettings
    from meshscale.mapper.mapper import Mapper
    from meshscale.pluginhost import PluginHost
    from meshscale.policy import PolicyEngine
    from meshscale.state.apikeys import ApiKeys
    from meshscale.state.lifecycle import NodeLifecycle
    from meshscale.state.store import State


class AdminServer(Protocol):
    """What the admin API uses of the running server (the Server implements it). A protocol,
    so this module does not import the server that imports it."""

    @property
    def config(self) -> Config: ...
    @property
    def host(self) -> PluginHost: ...
    @property
    def state(self) -> State | None: ...
    @property
    def lifecycle(self) -> NodeLifecycle | None: ...
    @property
    def apikeys(self) -> ApiKeys | None: ...
    @property
    def engine(self) -> PolicyEngine: ...
    @property
    def mapper(self) -> Mapper | None: ...
    @property
    def plane(self) -> ControlPlane | None: ...
    @property
    def policy_text(self) -> str | None: ...
    def set_policy(self, text: str, source: str, persist: bool) -> None: ...
    def stats(self) -> Mapping[str, float]: ...
    @property
    def dns(self) -> DnsSettings | None: ...


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


def admin_error(exc: MeshscaleError) -> Response:
    """The answer to a refused admin request (here and on the remote admin routes)."""
    if isinstance(exc, NotFoundError):
        return _error(str(exc), 404)
    if isinstance(exc, StorageError):
        return _error(str(exc), 503)  # nothing was changed; the same request may work later
    return _error(str(exc), 400)  # PolicyError (with its location) and other bad input


async def _body() -> dict[str, Any]:
    data = await request.get_json(force=True, silent=True)
    return data if isinstance(data, dict) else {}


def create_admin_app(server: AdminServer) -> Quart:
    app = Quart("meshscale-admin")

    def state() -> State:
        assert server.state is not None
        return server.state

    def lifecycle() -> NodeLifecycle:
        assert server.lifecycle is not None
        return server.lifecycle

    @app.errorhandler(MeshscaleError)
    async def refused(exc: MeshscaleError) -> Response:
        return admin_error(exc)

    def apikeys() -> ApiKeys:
        assert server.apikeys is not None
        return server.apikeys

    add_apikey_routes(app, apikeys)
    add_dns_routes(app, lambda: server.dns)

    # -- users ---------------------------------------------------------------------------------

    @app.get("/v1/users")
    async def list_users() -> Response:
        return _json([user_view(u) for _, u in sorted(state().users.items())])

    @app.post("/v1/users")
    async def create_user() -> Response:
        body = await _body()
        u = lifecycle().create_user(
            str(body.get("name", "")),
            display_name=str(body.get("displayName") or ""),
            email=str(body.get("email") or ""),
        )
        return _json(user_view(u))

    @app.post("/v1/users/<ref>/rename")
    async def rename_user(ref: str) -> Response:
        body = await _body()
        u = lifecycle().rename_user(ref, str(body.get("newName", "")))
        return _json(user_view(u))

    @app.delete("/v1/users/<ref>")
    async def destroy_user(ref: str) -> Response:
        u = lifecycle().delete_user(ref)
        return _json(user_view(u))

    # -- interactive logins ----------------------------------------------------------------------

    def logins() -> InteractiveLogins:
        assert server.plane is not None
        return server.plane.logins

    @app.post("/v1/auth/register")
    async def auth_register() -> Response:
        body = await _body()
        user = state().user(str(body.get("user", "")))
        n = logins().register(str(body.get("authId", "")), user)
        return _json(node_view(n, user))

    @app.post("/v1/auth/approve")
    async def auth_approve() -> Response:
        body = await _body()
        assert server.plane is not None
        return _json(dict(server.plane.checks.approve(str(body.get("authId", "")), None)))

    @app.post("/v1/auth/reject")
    async def auth_reject() -> Response:
        body = await _body()
        auth_id = str(body.get("authId", ""))
        waiting = logins().waiting(auth_id)
        logins().reject(auth_id)
        return _json({"authId": auth_id, "hostname": (waiting or {}).get("hostname", ""),
                      "rejected": True})

    # -- pre-auth keys ---------------------------------------------------------------------------

    @app.get("/v1/preauthkeys")
    async def list_keys() -> Response:
        st = state()
        wanted = request.args.get("user")
        uid = st.user(wanted).id if wanted else None
        out = [
            key_view(k, st.owner(k.user_id))
            for _, k in sorted(st.keys.items())
            if uid is None or k.user_id == uid
        ]
        return _json(out)

    @app.post("/v1/preauthkeys")
    async def create_key() -> Response:
        st = state()
        body = await _body()
        user = st.user(body["user"]) if body.get("user") not in (None, "") else None
        seconds = body.get("expiration", 3600)
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise MeshscaleError("expiration must be a non-negative number of seconds")
        tags = [str(t) for t in body.get("tags") or []]
        if tags and not server.engine.tags_permitted(
            st.policy_user(user) if user else None, tags
        ) and user is not None:
            raise MeshscaleError(f"user {user.name!r} may not own tags {tags} (tagOwners)")
        key, full = st.create_key(
            user,
            reusable=bool(body.get("reusable")),
            ephemeral=bool(body.get("ephemeral")),
            expiration=timedelta(seconds=seconds) if seconds else None,
            tags=tags,
            preauthorized=json_bool(body.get("preauthorized"), "preauthorized"),
        )
        view = key_view(key, user)
        view["key"] = full
        return _json(view)

    @app.post("/v1/preauthkeys/expire")
    async def expire_key() -> Response:
        st = state()
        body = await _body()
        key = st.expire_key(str(body.get("key", "")))
        return _json(key_view(key, st.owner(key.user_id)))

    @app.delete("/v1/preauthkeys/<ref>")
    async def delete_key(ref: str) -> Response:
        st = state()
        key = st.delete_key(ref)
        return _json(key_view(key, st.owner(key.user_id)))

    # -- nodes ---------------------------------------------------------------------------------

    def owner(n: Node) -> User | None:
        return state().owner(n.user_id)

    def view(n: Node) -> dict[str, Any]:
        """node_view plus routes as they are in force: approved by an admin or autoApprovers,
        and the subnets this node is the primary router for."""
        out = node_view(n, owner(n))
        out["approvedRoutes"] = list(state().policy_node(n).approved_routes)
        out["subnetRoutes"] = list(state().routes.primaries.get(n.id, []))
        return out

    @app.get("/v1/nodes")
    async def list_nodes() -> Response:
        st = state()
        wanted = request.args.get("user")
        uid = st.user(wanted).id if wanted else None
        return _json([view(n) for n in st.nodes_sorted() if uid is None or n.user_id == uid])

    def node_id(ref: str) -> int:
        if not ref.isdigit():
            raise NotFoundError(f"node {ref!r} not found (use the numeric id)")
        return int(ref)

    @app.get("/v1/nodes/<ref>")
    async def get_node(ref: str) -> Response:
        return _json(view(state().node(node_id(ref))))

    @app.post("/v1/nodes/<ref>/approve_routes")
    async def approve_routes(ref: str) -> Response:
        body = await _body()
        routes = body.get("routes")
        if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
            raise MeshscaleError("'routes' must be a list of prefixes")
        n = lifecycle().approve_routes(node_id(ref), routes)
        return _json(view(n))

    @app.post("/v1/nodes/<ref>/<any(approve, unapprove):verb>")
    async def approval(ref: str, verb: str) -> Response:
        life = lifecycle()
        return _json(view((life.approve if verb == "approve" else life.unapprove)(node_id(ref))))

    @app.delete("/v1/nodes/<ref>")
    async def delete_node(ref: str) -> Response:
        n = lifecycle().delete(node_id(ref), "deleted by an admin")
        return _json(node_view(n, owner(n)))

    @app.post("/v1/nodes/<ref>/expire")
    async def expire_node(ref: str) -> Response:
        body = await _body()
        when = None
        if body.get("expiry"):
            when = tailcfg.parse_gotime(body["expiry"])
            if when is None:
                raise MeshscaleError("'expiry' must be an RFC 3339 time, e.g. "
                                     "2025-08-27T10:00:00Z")
        if body.get("disable"):
            n = lifecycle().never_expire(node_id(ref))
            return _json(node_view(n, owner(n)))
        why = "expired by an admin" if when is None else f"expiry set by an admin to {when}"
        n = lifecycle().expire(node_id(ref), when, why=why)
        return _json(node_view(n, owner(n)))

    @app.post("/v1/nodes/backfillips")
    async def backfill_ips() -> Response:
        return _json({"changes": lifecycle().backfill_addresses()})

    @app.post("/v1/nodes/<ref>/tags")
    async def set_tags(ref: str) -> Response:
        body = await _body()
        tags = body.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise MeshscaleError("'tags' must be a list of tags")
        check_admin_tags(server.engine, tags)  # an empty list clears them (meshscale's extra)
        return _json(view(lifecycle().set_tags(node_id(ref), tags)))

    @app.post("/v1/nodes/<ref>/rename")
    async def rename_node(ref: str) -> Response:
        body = await _body()
        n = lifecycle().rename(node_id(ref), str(body.get("newName", "")))
        return _json(node_view(n, owner(n)))

    # -- policy --------------------------------------------------------------------------------

    @app.get("/v1/policy")
    async def get_policy() -> Response:
        return _json({"policy": server.policy_text, "mode": server.config.policy.mode})

    @app.put("/v1/policy")
    async def set_policy() -> Response:
        if server.config.policy.mode != "database":
            raise MeshscaleError(
                "policy.mode is 'file': edit the policy file and send SIGHUP instead"
            )
        body = await _body()
        text = body.get("policy")
        if not isinstance(text, str):
            raise MeshscaleError("missing 'policy' text")
        server.set_policy(text, "database", persist=True)
        return _json({"policy": text})

    @app.post("/v1/policy/check")
    async def check_policy() -> Response:
        body = await _body()
        users, nodes = state().policy_topology()
        server.engine.check(str(body.get("policy", "")), users, nodes)
        return _json({"ok": True})

    # -- server --------------------------------------------------------------------------------

    @app.get("/v1/plugins")
    async def plugins() -> Response:
        return _json([
            {"name": name, "hooks": server.host.hooks_of(name)} for name in server.host.names()
        ])

    @app.get("/v1/debug/sessions")
    async def sessions() -> Response:
        assert server.mapper is not None
        known = request.args.get("known") != "0"  # ?known=0: no peer lists (56 MB at 10,000)
        return _json([{"nodeId": s.node_id, "sent": dict(s.sent), "overflows": s.overflows}
                      | ({"known": s.known_ids()} if known else {})
                      for s in server.mapper.sessions.values()])

    @app.get("/v1/health")
    async def health() -> Response:
        return _json({"status": "pass", **server.stats()})

    return app
