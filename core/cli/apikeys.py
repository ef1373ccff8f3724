"""``meshscale apikeys create|list|expire|delete``: keys for /api/v1 (headscale's CLI shape)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from meshscale.cli.client import AdminClient
from meshscale.config import parse_duration
from meshscale.errors import MeshscaleError

COLUMNS = [("ID", "id"), ("Prefix", "prefix"), ("Expiration", "expiration"),
           ("Created", "createdAt"), ("Last seen", "lastSeen")]


def register(sub: Any, common: argparse.ArgumentParser,
             client: Callable[[argparse.Namespace], AdminClient]) -> None:
    """Add the ``apikeys`` command group to the top-level subparsers ``sub``."""

    def run(args: argparse.Namespace) -> Any:
        return command(client(args), args)

    keys = sub.add_parser("apikeys", aliases=["apikey"], parents=[common],
                          help="manage API keys (for /api/v1 and remote CLIs)")
    ks = keys.add_subparsers(dest="action", required=True)
    c = ks.add_parser("create", parents=[common], help="make a key and print it (shown once)")
    c.add_argument("-e", "--expiration", default="90d", help="e.g. 30d, 12h; 0 = never")
    ks.add_parser("list", aliases=["ls"], parents=[common])
    for name in ("expire", "delete"):
        x = ks.add_parser(name, parents=[common])
        x.add_argument("-p", "--prefix", dest="prefix_opt", default=None)
        x.add_argument("prefix", nargs="?", default=None, help="the key's prefix or id")
    keys.set_defaults(fn=run)


def command(c: AdminClient, args: argparse.Namespace) -> Any:
    if args.action == "create":
        seconds = float(parse_duration(args.expiration, "--expiration"))
        result = c.call("POST", "/v1/apikeys", {"expiration": seconds})
        if args.output == "table":
            return result["key"], []
        return result, COLUMNS
    if args.action in ("list", "ls"):
        return c.call("GET", "/v1/apikeys"), COLUMNS
    prefix = args.prefix_opt or args.prefix
    if not prefix:
        raise MeshscaleError(f"apikeys {args.action}: give the key's prefix (--prefix PREFIX)")
    if args.action == "expire":
        return c.call("POST", "/v1/apikeys/expire", {"prefix": prefix}), COLUMNS
    if args.action == "delete":
        return c.call("POST", "/v1/apikeys/delete", {"prefix": prefix}), COLUMNS
    raise MeshscaleError(f"unknown action {args.action}")
