"""``meshscale apikeys create|list|expire|delete``: keys for /api/v1 (headscale's command tree:
``apikeys`` / ``apikey`` / ``api``, ``-i/--id`` or ``-p/--prefix``)."""

from __future__ import annotations

import argparse
from typing import Any

from meshscale.cli.common import Out, add, client
from meshscale.cli.output import Column, when
from meshscale.configvalues import parse_duration
from meshscale.errors import MeshscaleError

# headscale's apikeys list (cmd/headscale/cli/api_key.go), then meshscale's Last seen.
COLUMNS: list[Column] = [("ID", "id"), ("Prefix", "prefix"),
                         ("Expiration", when("expiration", "-", coloured=True)),
                         ("Created", when("createdAt")),
                         ("Last seen", when("lastSeen", "-"))]


def _prefix(args: argparse.Namespace, keys: list[dict[str, Any]] | None) -> str:
    if args.prefix_opt or args.prefix:
        return str(args.prefix_opt or args.prefix)
    if args.id is not None and keys is not None:
        for k in keys:
            if str(k["id"]) == str(args.id):
                return str(k["prefix"])
        raise MeshscaleError(f"API key {args.id} not found")
    raise MeshscaleError(f"apikeys {args.action}: give the key's --prefix PREFIX or --id ID")


def run(args: argparse.Namespace) -> Out:
    c = client(args)
    if args.action == "create":
        seconds = float(parse_duration(args.expiration, "--expiration"))
        result = c.call("POST", "/v1/apikeys", {"expiration": seconds})
        if args.output in ("table", ""):
            return Out(result["key"])
        return Out(result, "apikey", COLUMNS)
    if args.action == "list":
        return Out(c.call("GET", "/v1/apikeys"), "apikey", COLUMNS)
    prefix = _prefix(args, c.call("GET", "/v1/apikeys") if args.id is not None else None)
    if args.action == "expire":
        return Out(c.call("POST", "/v1/apikeys/expire", {"prefix": prefix}), "apikey", COLUMNS)
    if args.action == "delete":
        return Out(c.call("POST", "/v1/apikeys/delete", {"prefix": prefix}), "apikey", COLUMNS)
    raise MeshscaleError(f"unknown action {args.action}")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    keys = add(sub, "apikeys", "manage API keys (for /api/v1 and remote CLIs)", common,
               aliases=["apikey", "api"])
    ks = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = add(ks, "create", "make a key and print it (shown once)", common, aliases=["c", "new"])
    c.add_argument("-e", "--expiration", default="90d",
                   help="how long the key is valid: 30d, 12h; 0 = never")
    add(ks, "list", "list API keys (by prefix)", common, aliases=["ls", "show"])
    for name, about, aliases in (
            ("expire", "expire a key now", ["revoke", "exp", "e"]),
            ("delete", "delete a key", ["remove", "del"])):
        x = add(ks, name, about, common, aliases=aliases)
        x.add_argument("-p", "--prefix", dest="prefix_opt", default=None, help="the key's prefix")
        x.add_argument("-i", "--id", default=None, help="the key's ID (apikeys list shows it)")
        x.add_argument("prefix", nargs="?", default=None, help="or the prefix, positionally")
    keys.set_defaults(fn=run, aliases={"c": "create", "new": "create", "ls": "list",
                                       "show": "list", "revoke": "expire", "exp": "expire",
                                       "e": "expire", "remove": "delete", "del": "delete"})
