"""headscale's REST API (``/api/v1/...``) on the main listener, with API keys.

One table, ``ROUTES``, defines every operation: the Quart routes are made from it and so is the
OpenAPI document (meshscale.api.openapi), so the two cannot drift. The operations call the node
lifecycle and state exactly as the admin socket does, so a change made here reaches connected
clients the same way a CLI change does.

Every request needs ``Authorization: Bearer <API key>``; without a valid, unexpired key the
answer is 401 and nothing else happens. Errors have grpc-gateway's shape,
``{"code": <gRPC code>, "message": ..., "details": []}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from quart import Response, request

from meshscale import auth
from meshscale.api import restdns, restops
from meshscale.api.resttypes import Call, RestServer, Unimplemented
from meshscale.contributions import HttpRoute
from meshscale.errors import (
    AuthError,
    MeshscaleError,
    NotFoundError,
    PolicyError,
    StorageError,
)

log = logging.getLogger(__name__)

MAX_BODY = 256 << 10  # a policy is the largest thing sent here; 256 KiB is plenty

# gRPC codes (and the HTTP status grpc-gateway maps each to).
INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, UNAVAILABLE, UNAUTHENTICATED = 3, 5, 12, 14, 16
_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, UNIMPLEMENTED: 501, UNAVAILABLE: 503,
           UNAUTHENTICATED: 401}


Op = Callable[[Call], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # headscale's template: /api/v1/node/{node_id}
    operation_id: str  # headscale's RPC name
    tag: str
    op: Op
    summary: str = ""
    query: tuple[tuple[str, str], ...] = ()  # (name, OpenAPI type)
    body: tuple[tuple[str, str], ...] = ()  # fields of the JSON body, (name, OpenAPI type)
    path_types: dict[str, str] = field(default_factory=dict)  # path parameter types

    @property
    def params(self) -> list[str]:
        return [p.split("}")[0] for p in self.path.split("{")[1:]]

    @property
    def quart_path(self) -> str:
        out = self.path
        for p in self.params:
            out = out.replace("{" + p + "}", f"<{p}>")
        return out


S, U64, B, L = "string", "uint64", "boolean", "array"

ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/user", "ListUsers", "users", restops.list_users,
          "List users (filter by id, name or email)", query=(("id", U64), ("name", S),
                                                               ("email", S))),
    Route("POST", "/api/v1/user", "CreateUser", "users", restops.create_user, "Create a user",
          body=(("name", S), ("displayName", S), ("email", S), ("pictureUrl", S))),
    Route("POST", "/api/v1/user/{old_id}/rename/{new_name}", "RenameUser", "users",
          restops.rename_user, "Rename a user", path_types={"old_id": U64}),
    Route("DELETE", "/api/v1/user/{id}", "DeleteUser", "users", restops.delete_user,
          "Delete a user (it must own no nodes)", path_types={"id": U64}),
    Route("GET", "/api/v1/preauthkey", "ListPreAuthKeys", "preauthkeys",
          restops.list_preauthkeys, "List pre-auth keys", query=(("user", U64),)),
    Route("POST", "/api/v1/preauthkey", "CreatePreAuthKey", "preauthkeys",
          restops.create_preauthkey, "Create a pre-auth key (the key is shown once)",
          body=(("user", U64), ("reusable", B), ("ephemeral", B), ("expiration", "date-time"),
                ("aclTags", L), ("preauthorized", B))),
    Route("POST", "/api/v1/preauthkey/expire", "ExpirePreAuthKey", "preauthkeys",
          restops.expire_preauthkey, "Expire a pre-auth key", body=(("id", U64), ("user", U64),
                                                                       ("key", S))),
    Route("DELETE", "/api/v1/preauthkey", "DeletePreAuthKey", "preauthkeys",
          restops.delete_preauthkey, "Delete a pre-auth key", query=(("id", U64), ("user", U64),
                                                                        ("key", S))),
    Route("GET", "/api/v1/node", "ListNodes", "nodes", restops.list_nodes,
          "List nodes (filter by user name)", query=(("user", S),)),
    Route("GET", "/api/v1/node/{node_id}", "GetNode", "nodes", restops.get_node, "Get a node",
          path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/register", "RegisterNode", "nodes", restops.register_node,
          "Register a node waiting in interactive login (key: its auth ID) to a user",
          query=(("user", S), ("key", S))),
    Route("DELETE", "/api/v1/node/{node_id}", "DeleteNode", "nodes", restops.delete_node,
          "Delete a node (its peers drop it)", path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/{node_id}/expire", "ExpireNode", "nodes", restops.expire_node,
          "Expire a node's key now or at expiry", query=(("expiry", "date-time"),
                                                           ("disableExpiry", B)),
          path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/{node_id}/rename/{new_name}", "RenameNode", "nodes",
          restops.rename_node, "Rename a node (its given name)", path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/{node_id}/approve_routes", "SetApprovedRoutes", "nodes",
          restops.approve_routes, "Set a node's approved routes", body=(("routes", L),),
          path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/{node_id}/approve", "ApproveNode", "nodes",
          restops.approve_node, "Let a node waiting for device approval (node.approval: "
          "manual) join the tailnet (meshscale only)", path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/{node_id}/unapprove", "UnapproveNode", "nodes",
          restops.unapprove_node, "Take an approved node out of the tailnet until it is "
          "approved again; its peers drop it at once (Tailscale's authorized: false; meshscale "
          "only)", path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/{node_id}/tags", "SetTags", "nodes", restops.set_tags,
          "Set a node's tags (at least one; each defined in the policy's tagOwners)",
          body=(("tags", L),), path_types={"node_id": U64}),
    Route("POST", "/api/v1/node/backfillips", "BackfillNodeIPs", "nodes", restops.backfill_ips,
          "Give nodes missing an IPv4 or IPv6 address one (needs confirmed=true)",
          query=(("confirmed", B),)),
    Route("POST", "/api/v1/debug/node", "DebugCreateNode", "debug", restops.debug_create_node,
          "A login waiting under auth id 'key' for a node without a client (register it "
          "with RegisterNode or AuthRegister)", body=(("user", S), ("key", S), ("name", S),
                                                     ("routes", L))),
    Route("POST", "/api/v1/auth/register", "AuthRegister", "auth", restops.auth_register,
          "Register a node waiting in interactive login to a user",
          body=(("user", S), ("authId", S))),
    Route("POST", "/api/v1/auth/approve", "AuthApprove", "auth", restops.auth_approve,
          "Approve a waiting Tailscale SSH check", body=(("authId", S),)),
    Route("POST", "/api/v1/auth/reject", "AuthReject", "auth", restops.auth_reject,
          "Refuse a waiting interactive login", body=(("authId", S),)),
    Route("GET", "/api/v1/apikey", "ListApiKeys", "apikeys", restops.list_apikeys,
          "List API keys"),
    Route("POST", "/api/v1/apikey", "CreateApiKey", "apikeys", restops.create_apikey,
          "Create an API key (shown once)", body=(("expiration", "date-time"),)),
    Route("POST", "/api/v1/apikey/expire", "ExpireApiKey", "apikeys", restops.expire_apikey,
          "Expire an API key", body=(("prefix", S), ("id", U64))),
    Route("DELETE", "/api/v1/apikey/{prefix}", "DeleteApiKey", "apikeys",
          restops.delete_apikey, "Delete an API key", query=(("id", U64),)),
    Route("GET", "/api/v1/policy", "GetPolicy", "policy", restops.get_policy,
          "Get the policy in force"),
    Route("PUT", "/api/v1/policy", "SetPolicy", "policy", restops.set_policy,
          "Set the policy (policy.mode: database)", body=(("policy", S),)),
    Route("POST", "/api/v1/policy/check", "CheckPolicy", "policy", restops.check_policy,
          "Check a policy against the nodes and users now registered", body=(("policy", S),)),
    Route("GET", "/api/v1/health", "Health", "health", restops.health, "Health"),
    # meshscale's own (docs/api.md, "DNS settings"): not in headscale's API.
    Route("GET", "/api/v1/dns", "GetDns", "dns", restdns.get_dns,
          "Get the DNS settings in force (meshscale extension)"),
    Route("PUT", "/api/v1/dns", "SetDns", "dns", restdns.set_dns,
          "Set the DNS settings, stored over the config file's (meshscale extension)",
          body=(("dns", "object"),)),
    Route("DELETE", "/api/v1/dns", "ResetDns", "dns", restdns.reset_dns,
          "Drop the stored DNS settings: the config file's apply (meshscale extension)"),
)


def error(code: int, message: str) -> Response:
    return Response(json.dumps({"code": code, "message": message, "details": []}),
                    status=_STATUS[code], content_type="application/json")


def _code_of(exc: MeshscaleError) -> int:
    if isinstance(exc, NotFoundError):
        return NOT_FOUND
    if isinstance(exc, Unimplemented):
        return UNIMPLEMENTED
    if isinstance(exc, StorageError):
        return UNAVAILABLE  # nothing was changed; the same request may work later
    return INVALID_ARGUMENT  # PolicyError, AuthError of an operation, bad input


def authenticated(server: RestServer) -> bool:
    """A valid, unexpired API key in ``Authorization: Bearer`` (its use noted: lastSeen)."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or server.apikeys is None:
        return False
    try:
        key = server.apikeys.check(presented.strip())
    except AuthError:
        return False
    try:
        server.apikeys.seen(key)
    except StorageError:
        # The request may only read; a lastSeen that could not be stored must not refuse it.
        log.warning("API key %s: its lastSeen was not stored (database unavailable)",
                    auth.masked_key(key.key_form, key.prefix))
    return True


async def read_body() -> dict[str, Any] | Response:
    """The JSON object sent, {} for none; or the refusal (too big, not JSON, not an object)."""
    if (request.content_length or 0) > MAX_BODY:
        return error(INVALID_ARGUMENT, f"request body over {MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
        if len(raw) > MAX_BODY:
            return error(INVALID_ARGUMENT, f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return error(INVALID_ARGUMENT, "the request body is not valid JSON")
    if not isinstance(data, dict):
        return error(INVALID_ARGUMENT, "the request body must be a JSON object")
    return data


def _view(server: RestServer, route: Route) -> Callable[..., Awaitable[Response]]:
    async def view(**params: str) -> Response:
        if not authenticated(server):
            return error(UNAUTHENTICATED, "Unauthorized")
        body = await read_body()
        if isinstance(body, Response):
            return body
        call = Call(server, params, {k: v for k, v in request.args.items()}, body)
        try:
            result = await route.op(call)
        except PolicyError as exc:
            return error(INVALID_ARGUMENT, str(exc))
        except MeshscaleError as exc:
            return error(_code_of(exc), str(exc))
        return Response(json.dumps(result), content_type="application/json")

    return view


def rest_routes(server: RestServer) -> list[HttpRoute]:
    """The Quart routes of ``ROUTES``, for the main listener."""
    grouped: dict[str, list[Route]] = {}
    for r in ROUTES:
        grouped.setdefault(r.quart_path, []).append(r)
    out: list[HttpRoute] = []
    for path, routes in grouped.items():
        views = {r.method: _view(server, r) for r in routes}

        async def dispatch(_views: dict[str, Callable[..., Awaitable[Response]]] = views,
                           **params: str) -> Response:
            return await _views[request.method](**params)

        out.append(HttpRoute(path, dispatch, tuple(views), name="api:" + path))
    return out
