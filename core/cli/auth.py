"""``meshscale auth``: complete or refuse interactive logins (``tailscale up`` without a key)
and Tailscale SSH checks: headscale's ``auth register | approve | reject`` (and
``nodes register``, its older spelling)."""

from __future__ import annotations

import argparse
from typing import Any

from meshscale.cli.common import Out, add, client
from meshscale.cli.nodes import auth_id, register_node
from meshscale.errors import MeshscaleError


def run(args: argparse.Namespace) -> Out:
    if args.action == "register":
        return register_node(args, args.auth_id)
    if args.action == "approve":
        return Out(client(args).call("POST", "/v1/auth/approve",
                                     {"authId": auth_id(args.auth_id)}),
                   None, [("Auth id", "authId"), ("From", "hostname"), ("To", "destination"),
                          ("As", "localUser"), ("Approved", "approved")])
    if args.action == "reject":
        return Out(client(args).call("POST", "/v1/auth/reject", {"authId": auth_id(args.auth_id)}),
                   None, [("Auth id", "authId"), ("Hostname", "hostname"),
                          ("Rejected", "rejected")])
    raise MeshscaleError(f"unknown action {args.action}")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    au = add(sub, "auth", "complete or refuse interactive logins and Tailscale SSH checks",
             common)
    aus = au.add_subparsers(dest="action", required=True, metavar="ACTION")
    x = add(aus, "register", "register the node waiting on that login, for a user", common)
    x.add_argument("--auth-id", required=True,
                   help="from the AuthURL: .../register/<auth-id> (the whole URL works too)")
    x.add_argument("-u", "--user", required=True, help="user name or ID")
    x = add(aus, "approve", "approve a waiting Tailscale SSH check (check mode)", common)
    x.add_argument("--auth-id", required=True, help="from the SSH banner's URL (or the URL)")
    x = add(aus, "reject", "refuse that login or SSH check; the client fails saying so",
            common)
    x.add_argument("--auth-id", required=True, help="from the AuthURL (or the whole URL)")
    au.set_defaults(fn=run, aliases={})
