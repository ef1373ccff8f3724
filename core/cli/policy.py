"""``meshscale policy``: get, set, check (online or --offline) and compile the policy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from meshscale.cli.client import AdminClient
from meshscale.cli.common import Out, add, client, load, local_client, refuse_if_running
from meshscale.contributions import pick
from meshscale.errors import MeshscaleError


def run(args: argparse.Namespace) -> Out:
    if args.action == "compile":
        return Out(_policy_compile(args))
    if args.action == "check" and getattr(args, "offline", False):
        return Out(_policy_check_offline(args))
    if args.action == "get" and getattr(args, "offline", False):
        text = _policy_get_offline(args)
        return Out(text if args.output in ("table", "") else {"policy": text})
    if getattr(args, "offline", False):  # set --offline writes this machine's database
        return Out(_policy_set_offline(args, local_client(args, "policy set --offline"),
                                       Path(args.file).read_text(encoding="utf-8")))
    c = client(args)
    if args.action == "get":
        result = c.call("GET", "/v1/policy")
        if args.output in ("table", ""):
            return Out(result.get("policy") or "")
        return Out(result)
    text = Path(args.file).read_text(encoding="utf-8")
    if args.action == "set":
        c.call("PUT", "/v1/policy", {"policy": text})
        return Out("policy updated")
    if args.action == "check":
        c.call("POST", "/v1/policy/check", {"policy": text})
        return Out("policy is valid")
    raise MeshscaleError(f"unknown action {args.action}")


def _engine(args: argparse.Namespace) -> Any:
    config, host = load(args)
    spec = pick(host.hooks.policy_engines(), config.policy.engine, "policy.engine", "engine")
    return spec.create(config)


def _policy_check_offline(args: argparse.Namespace) -> str:
    _engine(args).check(Path(args.file).read_text(encoding="utf-8"), [], [])
    return "policy is valid"


def _policy_get_offline(args: argparse.Namespace) -> str:
    """The policy stored in the database, read without a server and without opening the
    storage (nothing is created or migrated): what to fix when ``serve`` refuses it."""
    config, host = load(args)
    if config.policy.mode != "database":
        where = f" ({config.resolve(config.policy.path)})" if config.policy.path else ""
        raise MeshscaleError(f"policy.mode is 'file': the policy is policy.path{where}, "
                             "not stored in the database")
    backend = pick(host.hooks.storage_backends(), config.database.type, "database.type",
                   "storage backend")
    text = backend.stored_policy(config) if backend.stored_policy is not None else None
    if text is None:
        raise MeshscaleError("no policy is stored in the database (or it cannot be read)")
    return text


def _policy_set_offline(args: argparse.Namespace, c: AdminClient, text: str) -> str:
    """Write the stored policy straight into the database: the way out when ``serve`` refuses
    to start because the stored policy is invalid (docs/policy.md). Only with no server
    running: a running one holds the policy in memory and would not see the write."""
    refuse_if_running(
        c, "the server is running: use 'meshscale policy set --file F' without --offline")
    config, host = load(args)
    if config.policy.mode != "database":
        raise MeshscaleError(
            "policy.mode is 'file': the server reads policy.path, edit that file instead"
        )
    from meshscale.state.store import State  # noqa: PLC0415
    from meshscale.storage.base import PutPolicy  # noqa: PLC0415

    engine = _engine(args)
    backend = pick(host.hooks.storage_backends(), config.database.type, "database.type",
                   "storage backend")
    storage = backend.open(config)
    try:
        snap = storage.load()
        state = State(config, storage)
        state.load(snap)
        users, nodes = state.policy_topology()
        engine.check(text, users, nodes)  # PolicyError (with its location) writes nothing
        storage.apply([PutPolicy(text)])
    finally:
        storage.close()
    return "stored policy replaced; start the server"


def _policy_compile(args: argparse.Namespace) -> Any:
    from meshscale.policytool import compile_topology  # noqa: PLC0415

    if not args.topology:
        raise MeshscaleError("policy compile needs --topology FILE")
    topology = json.loads(Path(args.topology).read_text(encoding="utf-8"))
    text = Path(args.file).read_text(encoding="utf-8")
    return compile_topology(_engine(args), text, topology)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    pol = add(sub, "policy", "get, set, check or compile the policy", common)
    ps = pol.add_subparsers(dest="action", required=True, metavar="ACTION")
    x = add(ps, "get", "print the policy in force", common, aliases=["show", "view", "fetch"])
    # headscale's name for --offline is --bypass-grpc-and-access-database-directly.
    offline = ("--offline", "--bypass-grpc-and-access-database-directly")
    x.add_argument(*offline, dest="offline", action="store_true",
                   help="print the policy stored in the database without a running server")
    helps = {"set": "replace the policy (policy.mode database)",
             "check": "check a policy file against the running server's users and nodes",
             "compile": "print what a policy gives each node of a topology file"}
    for name, aliases in (("set", ["put", "update"]), ("check", []), ("compile", [])):
        x = add(ps, name, helps[name], common, aliases=aliases)
        x.add_argument("-f", "--file", required=True, help="the policy file (HuJSON)")
        if name == "compile":
            x.add_argument("--topology", required=True,
                           help="a JSON file of users and nodes to compile against")
        if name == "check":
            x.add_argument(*offline, dest="offline", action="store_true",
                           help="check without a running server (no topology)")
        if name == "set":
            x.add_argument(*offline, dest="offline", action="store_true",
                           help="write the stored policy directly (server must be stopped)")
    pol.set_defaults(fn=run, aliases={"show": "get", "view": "get", "fetch": "get",
                                      "put": "set", "update": "set"})
