"""``meshscale nodes``: headscale's ``nodes`` command tree (alias ``node``)."""

from __future__ import annotations

import argparse
from typing import Any

from meshscale import tailcfg
from meshscale.cli.common import Out, add, client, confirm
from meshscale.cli.output import GREEN, RED, Column, choice, short_key, when
from meshscale.errors import MeshscaleError

# headscale's nodes list and list-routes (cmd/headscale/cli/nodes.go); then meshscale's
# Approved (device approval, node.approval: manual).
COLUMNS: list[Column] = [
    ("ID", "id"), ("Hostname", "name"), ("Name", "givenName"),
    ("MachineKey", short_key("machineKey")), ("NodeKey", short_key("nodeKey")),
    ("User", "user"), ("Tags", "tags"), ("IP addresses", "ipAddresses"),
    ("Ephemeral", "ephemeral"), ("Last seen", when("lastSeen")),
    ("Expiration", when("expiry", "N/A")),
    ("Connected", choice("online", "online", "offline", (GREEN, RED))),
    ("Expired", choice("expired", "yes", "no", (RED, GREEN))),
    ("Approved", choice("approved", "yes", "no")),
]
ROUTE_COLUMNS: list[Column] = [("ID", "id"), ("Hostname", "givenName"),
                               ("Approved", "approvedRoutes"), ("Available", "availableRoutes"),
                               ("Serving (Primary)", "subnetRoutes")]


# headscale's ListNodes shows a tagged node as owned by Tailscale's tagged-devices pseudo-user
# (hscontrol/grpcv1.go nodesToProto), whoever registered it: the tag is its identity.
TAGGED_DEVICES: dict[str, Any] = {
    "id": tailcfg.TAGGED_USER_ID, "name": tailcfg.TAGGED_USER["LoginName"],
    "displayName": tailcfg.TAGGED_USER["DisplayName"], "email": "", "profilePicUrl": "",
    "groups": [], "provider": "", "createdAt": None,
}


def as_listed(node: dict[str, Any]) -> dict[str, Any]:
    """A node as headscale's nodes list prints it: a tagged one's user is tagged-devices."""
    return {**node, "user": TAGGED_DEVICES} if node.get("tags") else node


def has_routes(node: dict[str, Any]) -> bool:
    """Whether list-routes shows the node: as headscale's (cmd/headscale/cli/nodes.go), only
    nodes with a route served, approved or announced, in the table and in -o json alike."""
    return any(node.get(k) for k in ("subnetRoutes", "approvedRoutes", "availableRoutes"))


def _split(values: list[str]) -> list[str]:
    """headscale's string-slice flags: repeated and/or comma-separated."""
    return [v.strip() for part in values for v in part.split(",") if v.strip()]


def auth_id(text: str) -> str:
    """An auth id as given: bare, or the whole AuthURL the client printed."""
    return text.strip().rstrip("/").rsplit("/", 1)[-1]


def register_node(args: argparse.Namespace, text: str) -> Out:
    """Register the node waiting on interactive login ``text`` for ``args.user``."""
    result = client(args).call("POST", "/v1/auth/register",
                               {"authId": auth_id(text), "user": args.user})
    return Out(result, "node", COLUMNS)


def run(args: argparse.Namespace) -> Out:
    if args.action == "register":  # headscale's older spelling of ``auth register``
        return register_node(args, args.key)
    c = client(args)
    if args.action == "backfillips":
        confirm(args, "Assign IPs to nodes missing an IPv4 or IPv6 address?")
        result = c.call("POST", "/v1/nodes/backfillips")
        if args.output in ("table", ""):
            return Out("\n".join(result["changes"]) or "no node was missing an address")
        return Out(result)
    node = f"/v1/nodes/{args.identifier}" if getattr(args, "identifier", None) else ""
    if args.action == "list":
        path = "/v1/nodes" + (f"?user={args.user}" if args.user else "")
        return Out([as_listed(n) for n in c.call("GET", path)], "node", COLUMNS)
    if args.action == "delete":
        confirm(args, f"Delete the node {args.identifier}?")
        return Out(c.call("DELETE", node), "node", COLUMNS)
    if args.action == "expire":
        if args.disable and args.expiry:
            raise MeshscaleError("nodes expire takes --expiry or --disable, not both")
        body: dict[str, Any] = {"expiry": args.expiry} if args.expiry else {}
        if args.disable:
            body["disable"] = True
        return Out(c.call("POST", f"{node}/expire", body), "node", COLUMNS)
    if args.action == "rename":
        return Out(c.call("POST", f"{node}/rename", {"newName": args.new_name}), "node",
                   COLUMNS)
    if args.action == "tag":
        return Out(c.call("POST", f"{node}/tags", {"tags": _split(args.tags)}), "node",
                   COLUMNS)
    if args.action == "approve":
        return Out(c.call("POST", f"{node}/approve"), "node", COLUMNS)
    if args.action == "unapprove":
        confirm(args, f"Take node {args.identifier} out of the tailnet until it is approved "
                      "again?")
        return Out(c.call("POST", f"{node}/unapprove"), "node", COLUMNS)
    if args.action == "approve-routes":
        return Out(c.call("POST", f"{node}/approve_routes", {"routes": _split(args.routes)}),
                   "node", ROUTE_COLUMNS)
    if args.action == "list-routes":
        result = c.call("GET", node or "/v1/nodes")
        listed = result if isinstance(result, list) else [result]
        return Out([as_listed(n) for n in listed if has_routes(n)], "node", ROUTE_COLUMNS)
    raise MeshscaleError(f"unknown action {args.action}")


def _node(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-i", "--identifier", required=required, default=None,
                   help="the node's ID (nodes list shows it)")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    nodes = add(sub, "nodes", "manage nodes", common, aliases=["node"])
    ns = nodes.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = add(ns, "list", "list nodes", common, aliases=["ls", "show"])
    ls.add_argument("-u", "--user", default=None, help="only this user's nodes (name or ID)")
    x = add(ns, "delete", "delete a node; its peers drop it at once (asks first)", common,
            aliases=["del"])
    _node(x)
    x = add(ns, "expire", "expire (log out) a node now, or at --expiry; the client must log in "
            "again", common, aliases=["logout", "exp", "e"])
    _node(x)
    x.add_argument("-e", "--expiry", default="",
                   help="when, in RFC 3339 (e.g. 2025-08-27T10:00:00Z); empty: now")
    x.add_argument("-d", "--disable", action="store_true",
                   help="the node's key never expires instead")
    x = add(ns, "rename", "change a node's MagicDNS name", common)
    _node(x)
    x.add_argument("new_name", metavar="NEW_NAME", help="the new name")
    x = add(ns, "tag", "set a node's tags (replaces them; as headscale's forced tags)", common,
            aliases=["tags", "t"])
    _node(x)
    x.add_argument("-t", "--tags", action="append", default=[],
                   help="tag:name (repeat or comma-separate; none clears)")
    x = add(ns, "approve", "let a node that waits for approval (node.approval: manual) join "
            "the tailnet", common)
    _node(x)
    x = add(ns, "unapprove", "take an approved node out of the tailnet until it is approved "
            "again; its peers drop it at once (asks first)", common)
    _node(x)
    x = add(ns, "approve-routes", "set the routes an admin approves (replaces the list)",
            common)
    _node(x)
    x.add_argument("-r", "--routes", action="append", default=[],
                   help="comma-separated prefixes, e.g. 10.0.0.0/8,192.168.0.0/24; '' clears")
    x = add(ns, "list-routes", "list the routes nodes announce, are approved for and serve",
            common, aliases=["lsr", "routes"])
    _node(x, required=False)
    x = add(ns, "register", "register a node waiting on an interactive login (auth register)",
            common)
    x.add_argument("-u", "--user", required=True, help="user name or ID")
    x.add_argument("-k", "--key", required=True, help="the auth ID from the node's AuthURL")
    add(ns, "backfillips", "give nodes missing an IPv4 or IPv6 address one (asks first)",
        common)
    nodes.set_defaults(fn=run, aliases={"ls": "list", "show": "list", "del": "delete",
                                        "logout": "expire", "exp": "expire", "e": "expire",
                                        "tags": "tag", "t": "tag", "lsr": "list-routes",
                                        "routes": "list-routes"})
