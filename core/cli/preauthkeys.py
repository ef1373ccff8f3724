"""``meshscale preauthkeys``: headscale's ``preauthkeys`` command tree."""

from __future__ import annotations

import argparse
from typing import Any

from meshscale.cli.common import Out, add, client
from meshscale.cli.output import Column, when
from meshscale.configvalues import parse_duration
from meshscale.errors import MeshscaleError


def _owner(row: dict[str, Any]) -> str:
    """headscale's Owner: a tagged key's tags (one a line), else its user, else "-"."""
    if row.get("aclTags"):
        return "\n".join(row["aclTags"])
    user = row.get("user")
    return str(user.get("name", "")) if isinstance(user, dict) else "-"


# headscale's preauthkeys list (cmd/headscale/cli/preauthkeys.go).
COLUMNS: list[Column] = [("ID", "id"), ("Key/Prefix", "key"), ("Reusable", "reusable"),
                         ("Ephemeral", "ephemeral"), ("Used", "used"),
                         ("Expiration", when("expiration", "-", coloured=True)),
                         ("Created", when("createdAt")), ("Owner", _owner),
                         # meshscale's, after headscale's: nodes skip device approval
                         ("Pre-approved", "preauthorized")]


def _ref(args: argparse.Namespace) -> str:
    ref = args.id if args.id is not None else args.key
    if not ref:
        raise MeshscaleError(f"preauthkeys {args.action} needs --id ID (or the key or its "
                             "prefix)")
    return str(ref)


def run(args: argparse.Namespace) -> Out:
    c = client(args)
    if args.action == "create":
        seconds = float(parse_duration(args.expiration, "--expiration"))
        tags = [t for part in args.tags for t in part.split(",") if t]
        result = c.call("POST", "/v1/preauthkeys", {
            "user": args.user, "reusable": args.reusable, "ephemeral": args.ephemeral,
            "expiration": seconds, "tags": tags, "preauthorized": args.pre_approved,
        })
        if args.output in ("table", ""):
            return Out(result["key"])
        return Out(result, "preauthkey", COLUMNS)
    if args.action == "list":
        path = "/v1/preauthkeys" + (f"?user={args.user}" if args.user else "")
        return Out(c.call("GET", path), "preauthkey", COLUMNS)
    if args.action == "expire":
        return Out(c.call("POST", "/v1/preauthkeys/expire", {"key": _ref(args)}), "preauthkey",
                   COLUMNS)
    if args.action == "delete":
        return Out(c.call("DELETE", f"/v1/preauthkeys/{_ref(args)}"), "preauthkey", COLUMNS)
    raise MeshscaleError(f"unknown action {args.action}")


def _which(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--id", default=None, help="the key's ID (preauthkeys list shows it)")
    p.add_argument("key", nargs="?", default=None, help="or the key itself, or its prefix")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = add(sub, "preauthkeys", "manage pre-auth keys", common,
               aliases=["preauthkey", "authkey", "pre"])
    ks = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = add(ks, "create", "make a key; prints it (only now: the server keeps a hash)", common,
            aliases=["c", "new"])
    c.add_argument("-u", "--user", default=None, help="the user (name or ID) nodes belong to")
    c.add_argument("--reusable", action="store_true", help="the key registers many nodes")
    c.add_argument("--ephemeral", action="store_true",
                   help="nodes it registers are deleted when they go offline")
    c.add_argument("-e", "--expiration", default="1h",
                   help="how long the key is valid: 30m, 1h, 90d; 0 = never")
    c.add_argument("--tags", action="append", default=[],
                   help="tag:x for the nodes it registers (repeat or comma-separate)")
    c.add_argument("--pre-approved", "--preauthorized", dest="pre_approved",
                   action="store_true",
                   help="nodes it registers need no device approval (node.approval: manual)")
    ls = add(ks, "list", "list keys (by prefix; the secret is never shown again)", common,
             aliases=["ls", "show"])
    ls.add_argument("-u", "--user", default=None, help="only this user's keys (name or ID)")
    e = add(ks, "expire", "expire a key now", common, aliases=["revoke", "exp", "e"])
    e.add_argument("-u", "--user", default=None, help="accepted for headscale's older CLI")
    _which(e)
    d = add(ks, "delete", "delete a key; nodes it registered stay", common,
            aliases=["del", "rm", "d"])
    _which(d)
    keys.set_defaults(fn=run, aliases={"c": "create", "new": "create", "ls": "list",
                                       "show": "list", "revoke": "expire", "exp": "expire",
                                       "e": "expire", "del": "delete", "rm": "delete",
                                       "d": "delete"})
