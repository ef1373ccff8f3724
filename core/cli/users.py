"""``meshscale users``: headscale's ``users`` command tree (alias ``user``)."""

from __future__ import annotations

import argparse
from typing import Any

from meshscale.cli.common import Out, add, client, confirm
from meshscale.cli.output import Column, when
from meshscale.errors import MeshscaleError

# headscale's users list: "Name" is the display name, "Username" the name.
COLUMNS: list[Column] = [("ID", "id"), ("Name", "displayName"), ("Username", "name"),
                         ("Email", "email"), ("Created", when("createdAt"))]


def _ref(args: argparse.Namespace) -> str:
    """The user named by -i ID or -n NAME (headscale's two ways)."""
    ref = args.identifier if args.identifier is not None else args.name
    if ref in (None, ""):
        raise MeshscaleError(f"users {args.action} needs --identifier ID or --name NAME")
    return str(ref)


def run(args: argparse.Namespace) -> Out:
    c = client(args)
    if args.action == "create":
        return Out(c.call("POST", "/v1/users", {"name": args.user_name,
                                                "displayName": args.display_name,
                                                "email": args.email}), "user", COLUMNS)
    if args.action == "list":
        users: list[dict[str, Any]] = c.call("GET", "/v1/users")
        if args.identifier is not None:
            users = [u for u in users if str(u["id"]) == str(args.identifier)]
        if args.name:
            users = [u for u in users if u["name"] == args.name]
        if args.email:
            users = [u for u in users if u.get("email") == args.email]
        return Out(users, "user", COLUMNS)
    if args.action == "rename":
        return Out(c.call("POST", f"/v1/users/{_ref(args)}/rename",
                          {"newName": args.new_name}), "user", COLUMNS)
    if args.action == "destroy":
        ref = _ref(args)
        confirm(args, f"Remove the user {ref!r} and its pre-auth keys?")
        return Out(c.call("DELETE", f"/v1/users/{ref}"), "user", COLUMNS)
    raise MeshscaleError(f"unknown action {args.action}")


def _who(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("-i", "--identifier", default=None, help="the user's ID")
    p.add_argument("-n", "--name", default=None, help="the user's name")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    users = add(sub, "users", "manage users", common, aliases=["user"])
    us = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = add(us, "create", "create a user", common, aliases=["c", "new"])
    c.add_argument("user_name", metavar="NAME", help="the new user's name")
    c.add_argument("-d", "--display-name", default="", help="display name")
    c.add_argument("-e", "--email", default="", help="email address")
    ls = add(us, "list", "list users (all, or those matching the filters)", common,
             aliases=["ls", "show"])
    _who(ls)
    ls.add_argument("-e", "--email", default="", help="only the user with this email")
    r = add(us, "rename", "rename a user", common, aliases=["mv"])
    _who(r)
    r.add_argument("-r", "--new-name", required=True, help="the new name")
    d = add(us, "destroy", "delete a user and its pre-auth keys (refused while it has nodes)",
            common, aliases=["delete"])
    _who(d)
    users.set_defaults(fn=run, aliases={"c": "create", "new": "create", "ls": "list",
                                        "show": "list", "mv": "rename", "delete": "destroy"})
