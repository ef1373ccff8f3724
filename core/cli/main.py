"""``meshscale``: serve, configtest, and admin commands that talk to the running server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshscale import __version__
from meshscale.checks import explain
from meshscale.cli import apikeys, serve
from meshscale.cli.client import AdminClient
from meshscale.cli.output import emit
from meshscale.config import Config, load_config, load_raw, parse_duration
from meshscale.contributions import pick
from meshscale.errors import ConfigError, MeshscaleError, config_problems
from meshscale.logs import configure_logging
from meshscale.pluginhost import PluginHost, available_plugins

USER_COLUMNS = [("ID", "id"), ("Name", "name"), ("Display name", "displayName"),
                ("Email", "email"), ("Created", "createdAt")]
NODE_COLUMNS = [("ID", "id"), ("Hostname", "name"), ("Name", "givenName"), ("User", "user"),
                ("IP addresses", "ipAddresses"), ("Tags", "tags"), ("Online", "online"),
                ("Last seen", "lastSeen"), ("Expiry", "expiry"), ("Expired", "expired")]
ROUTE_COLUMNS = [("ID", "id"), ("Name", "givenName"), ("Approved", "approvedRoutes"),
                 ("Available", "availableRoutes"), ("Serving (primary)", "subnetRoutes")]
KEY_COLUMNS = [("ID", "id"), ("Key", "key"), ("User", "user"), ("Reusable", "reusable"),
               ("Ephemeral", "ephemeral"), ("Used", "used"), ("Expiration", "expiration"),
               ("Tags", "aclTags")]


def load(args: argparse.Namespace) -> tuple[Config, PluginHost]:
    """Config with plugin sections: plugins are loaded first so they can claim their keys."""
    host = PluginHost()

    def sections(names: list[str]) -> Sequence[Any]:
        host.load(names)
        return host.hooks.config_sections()

    return load_config(args.config, sections_for=sections), host


def client(args: argparse.Namespace) -> AdminClient:
    config, _ = load(args)  # with plugin sections: their keys are not "unknown"
    return AdminClient(str(config.resolve(config.unix_socket)))


# -- commands --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config, host = load(args)
    return serve.serve(config, host, args.config)


def cmd_configtest(args: argparse.Namespace) -> int:
    return serve.configtest(args.config)


def _user_arg(value: str) -> str:
    return value


def cmd_users(args: argparse.Namespace) -> Any:
    c = client(args)
    if args.action == "create":
        return c.call("POST", "/v1/users", {"name": args.name, "displayName": args.display_name,
                                            "email": args.email}), USER_COLUMNS
    if args.action == "list":
        return c.call("GET", "/v1/users"), USER_COLUMNS
    if args.action == "rename":
        return c.call("POST", f"/v1/users/{args.user}/rename", {"newName": args.new_name}), \
            USER_COLUMNS
    if args.action == "destroy":
        return c.call("DELETE", f"/v1/users/{args.user}"), USER_COLUMNS
    raise MeshscaleError(f"unknown action {args.action}")


def cmd_preauthkeys(args: argparse.Namespace) -> Any:
    c = client(args)
    if args.action == "create":
        seconds = float(parse_duration(args.expiration, "--expiration"))
        tags = [t for part in args.tags for t in part.split(",") if t]
        result = c.call("POST", "/v1/preauthkeys", {
            "user": args.user, "reusable": args.reusable, "ephemeral": args.ephemeral,
            "expiration": seconds, "tags": tags,
        })
        if args.output == "table":
            return result["key"], []
        return result, KEY_COLUMNS
    if args.action == "list":
        path = "/v1/preauthkeys" + (f"?user={args.user}" if args.user else "")
        return c.call("GET", path), KEY_COLUMNS
    if args.action == "expire":
        return c.call("POST", "/v1/preauthkeys/expire", {"key": args.key}), KEY_COLUMNS
    raise MeshscaleError(f"unknown action {args.action}")


def _auth_id(text: str) -> str:
    """An auth id as given: bare, or the whole AuthURL the client printed."""
    return text.strip().rstrip("/").rsplit("/", 1)[-1]


def cmd_auth(args: argparse.Namespace) -> Any:
    c = client(args)
    if args.action == "register":
        return c.call("POST", "/v1/auth/register",
                      {"authId": _auth_id(args.auth_id), "user": args.user}), NODE_COLUMNS
    if args.action == "reject":
        return c.call("POST", "/v1/auth/reject", {"authId": _auth_id(args.auth_id)}), \
            [("Auth id", "authId"), ("Hostname", "hostname"), ("Rejected", "rejected")]
    raise MeshscaleError(f"unknown action {args.action}")


def cmd_nodes(args: argparse.Namespace) -> Any:
    c = client(args)
    if args.action == "register":  # headscale's older spelling of `auth register`
        return c.call("POST", "/v1/auth/register",
                      {"authId": _auth_id(args.key), "user": args.user}), NODE_COLUMNS
    if args.action == "list":
        path = "/v1/nodes" + (f"?user={args.user}" if args.user else "")
        return c.call("GET", path), NODE_COLUMNS
    if args.action == "delete":
        return c.call("DELETE", f"/v1/nodes/{args.identifier}"), NODE_COLUMNS
    if args.action == "expire":
        return c.call("POST", f"/v1/nodes/{args.identifier}/expire"), NODE_COLUMNS
    if args.action == "rename":
        return c.call("POST", f"/v1/nodes/{args.identifier}/rename",
                      {"newName": args.new_name}), NODE_COLUMNS
    if args.action == "approve-routes":
        routes = [r.strip() for r in args.routes.split(",") if r.strip()]
        return c.call("POST", f"/v1/nodes/{args.identifier}/approve_routes",
                      {"routes": routes}), ROUTE_COLUMNS
    if args.action == "list-routes":
        path = "/v1/nodes" + (f"/{args.identifier}" if args.identifier else "")
        result = c.call("GET", path)
        return result if isinstance(result, list) else [result], ROUTE_COLUMNS
    raise MeshscaleError(f"unknown action {args.action}")


def cmd_policy(args: argparse.Namespace) -> Any:
    if args.action == "compile":
        return _policy_compile(args), []
    if args.action == "check" and getattr(args, "offline", False):
        return _policy_check_offline(args), []
    c = client(args)
    if args.action == "get":
        result = c.call("GET", "/v1/policy")
        if args.output == "table":
            return result.get("policy") or "", []
        return result, []
    text = Path(args.file).read_text(encoding="utf-8")
    if args.action == "set" and args.offline:
        return _policy_set_offline(args, c, text), []
    if args.action == "set":
        c.call("PUT", "/v1/policy", {"policy": text})
        return "policy updated", []
    if args.action == "check":
        c.call("POST", "/v1/policy/check", {"policy": text})
        return "policy is valid", []
    raise MeshscaleError(f"unknown action {args.action}")


def _engine(args: argparse.Namespace) -> Any:
    config, host = load(args)
    spec = pick(host.hooks.policy_engines(), config.policy.engine, "policy.engine", "engine")
    return spec.create(config)


def _policy_check_offline(args: argparse.Namespace) -> str:
    _engine(args).check(Path(args.file).read_text(encoding="utf-8"), [], [])
    return "policy is valid"


def _policy_set_offline(args: argparse.Namespace, c: AdminClient, text: str) -> str:
    """Write the stored policy straight into the database: the way out when ``serve`` refuses
    to start because the stored policy is invalid (docs/policy.md). Only with no server
    running: a running one holds the policy in memory and would not see the write."""
    try:
        c.call("GET", "/v1/health")
    except MeshscaleError as exc:
        if "cannot reach the server" not in str(exc):
            raise
    else:
        raise MeshscaleError(
            "the server is running: use 'meshscale policy set --file F' without --offline"
        )
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


def cmd_plugins(args: argparse.Namespace) -> Any:
    # Only the names under plugins: matter here; a full load would refuse plugin sections (and
    # fail on a broken plugin, which this command must still list, with its error).
    raw, _ = load_raw(args.config)
    names = raw.get("plugins", list(Config.plugins))
    enabled = set(names) if isinstance(names, list) else set()
    out = []
    for name, ep in sorted(available_plugins().items()):
        dist = ep.dist
        item: dict[str, Any] = {
            "name": name,
            "enabled": name in enabled,
            "module": ep.value,
            "distribution": dist.name if dist else "",
            "version": dist.version if dist else "",
            "hooks": [],
        }
        if name in enabled:
            host = PluginHost()
            try:
                host.load([name])
                item["hooks"] = host.hooks_of(name)
            except MeshscaleError as exc:
                item["error"] = str(exc)
        out.append(item)
    return out, [("Name", "name"), ("Enabled", "enabled"), ("Version", "version"),
                 ("Distribution", "distribution"), ("Hooks", "hooks")]


def cmd_bench(args: argparse.Namespace) -> Any:
    import resource  # noqa: PLC0415

    from meshscale.bench.catalog import SCENARIOS  # noqa: PLC0415

    # Thousands of connections: one descriptor each here and in the server (which inherits).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    configure_logging(None, "warning")
    import gc  # noqa: PLC0415

    gc.set_threshold(50_000, 20, 50)  # the generator holds thousands of connections too
    kwargs: dict[str, Any] = {"nodes": args.nodes, "events": args.events,
                              "database": args.database}
    if args.scenario == "storm" and args.self_policy:
        kwargs["policy"] = True
    if args.scenario == "churn":
        kwargs["rate"] = args.rate
    if args.scenario == "soak":
        kwargs.update(idle=args.idle, per_ip=args.per_ip, ceiling=args.ceiling)
    result = asyncio.run(asyncio.wait_for(SCENARIOS[args.scenario](**kwargs), args.time_limit))
    if args.json:
        print(json.dumps(result))
        return 0
    return result, [(k, k) for k in result if k != "curve"]


def cmd_db(args: argparse.Namespace) -> Any:
    if args.action == "backup":
        from meshscale.cli.backup import backup  # noqa: PLC0415

        config, _ = load(args)
        return backup(config, Path(args.file)), []
    from meshscale.cli.db import cmd_db_copy  # noqa: PLC0415

    return cmd_db_copy(args, load), []


def cmd_version(args: argparse.Namespace) -> Any:
    return {"version": __version__}, [("Version", "version")]


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def options(defaults: bool) -> argparse.ArgumentParser:
        # Global options work before or after the subcommand; on subparsers they default to
        # SUPPRESS so a value given before the subcommand is not overwritten.
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument(
            "-c", "--config", default=None if defaults else argparse.SUPPRESS,
            help="config file (default: $MESHSCALE_CONFIG, ./config.yaml, "
            "~/.config/meshscale/config.yaml, /etc/meshscale/config.yaml)")
        parser.add_argument("-o", "--output", choices=["table", "json", "yaml"],
                            default="table" if defaults else argparse.SUPPRESS)
        return parser

    common = options(defaults=False)
    p = argparse.ArgumentParser(prog="meshscale", parents=[options(defaults=True)],
                                description="A self-hosted Tailscale control server.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", parents=[common], help="run the server").set_defaults(fn=cmd_serve)
    sub.add_parser("configtest", parents=[common], help="check the config and exit") \
        .set_defaults(fn=cmd_configtest)
    sub.add_parser("version", parents=[common]).set_defaults(fn=cmd_version)

    users = sub.add_parser("users", parents=[common], help="manage users")
    us = users.add_subparsers(dest="action", required=True)
    c = us.add_parser("create", parents=[common])
    c.add_argument("name")
    c.add_argument("--display-name", default="")
    c.add_argument("--email", default="")
    us.add_parser("list", aliases=["ls"], parents=[common])
    r = us.add_parser("rename", parents=[common])
    r.add_argument("-i", "--identifier", "--name", dest="user", required=True)
    r.add_argument("-r", "--new-name", required=True)
    d = us.add_parser("destroy", parents=[common])
    d.add_argument("-i", "--identifier", "--name", dest="user", required=True)
    users.set_defaults(fn=cmd_users)

    keys = sub.add_parser("preauthkeys", parents=[common], help="manage pre-auth keys")
    ks = keys.add_subparsers(dest="action", required=True)
    c = ks.add_parser("create", parents=[common])
    c.add_argument("-u", "--user", default=None, help="user name or id")
    c.add_argument("--reusable", action="store_true")
    c.add_argument("--ephemeral", action="store_true")
    c.add_argument("-e", "--expiration", default="1h", help="e.g. 30m, 1h, 90d; 0 = never")
    c.add_argument("--tags", action="append", default=[], help="tag:x (repeat or comma-separate)")
    ls = ks.add_parser("list", aliases=["ls"], parents=[common])
    ls.add_argument("-u", "--user", default=None)
    e = ks.add_parser("expire", parents=[common])
    e.add_argument("-u", "--user", default=None)
    e.add_argument("key", help="the key, its prefix or its id")
    keys.set_defaults(fn=cmd_preauthkeys)

    apikeys.register(sub, common, client)

    nodes = sub.add_parser("nodes", aliases=["node"], parents=[common], help="manage nodes")
    ns = nodes.add_subparsers(dest="action", required=True)
    ls = ns.add_parser("list", aliases=["ls"], parents=[common])
    ls.add_argument("-u", "--user", default=None)
    for name in ("delete", "expire"):
        x = ns.add_parser(name, parents=[common])
        x.add_argument("-i", "--identifier", required=True)
        x.add_argument("--force", action="store_true", help="accepted for headscale parity")
    x = ns.add_parser("rename", parents=[common])
    x.add_argument("-i", "--identifier", required=True)
    x.add_argument("new_name")
    x = ns.add_parser("approve-routes", parents=[common],
                      help="set the routes an admin approves (replaces the list; '' clears)")
    x.add_argument("-i", "--identifier", required=True)
    x.add_argument("-r", "--routes", required=True, help="comma-separated prefixes")
    x = ns.add_parser("register", parents=[common],
                      help="register a node waiting for an interactive login (auth register)")
    x.add_argument("-u", "--user", required=True)
    x.add_argument("-k", "--key", required=True, help="the auth id from the node's AuthURL")
    x = ns.add_parser("list-routes", parents=[common])
    x.add_argument("-i", "--identifier", default=None)
    nodes.set_defaults(fn=cmd_nodes)

    au = sub.add_parser("auth", parents=[common],
                        help="complete or refuse interactive logins (tailscale up without a key)")
    aus = au.add_subparsers(dest="action", required=True)
    x = aus.add_parser("register", parents=[common])
    x.add_argument("--auth-id", required=True, help="from the AuthURL: .../register/<auth-id>")
    x.add_argument("-u", "--user", required=True, help="user name or id")
    x = aus.add_parser("reject", parents=[common])
    x.add_argument("--auth-id", required=True)
    au.set_defaults(fn=cmd_auth)

    pol = sub.add_parser("policy", parents=[common], help="policy get/set/check/compile")
    ps = pol.add_subparsers(dest="action", required=True)
    ps.add_parser("get", parents=[common])
    for name in ("set", "check", "compile"):
        x = ps.add_parser(name, parents=[common])
        x.add_argument("-f", "--file", required=True)
        if name == "compile":
            x.add_argument("--topology", required=True)
        if name == "check":
            x.add_argument("--offline", action="store_true",
                           help="check without a running server (no topology)")
        if name == "set":
            x.add_argument("--offline", action="store_true",
                           help="write the stored policy directly (server must be stopped)")
    pol.set_defaults(fn=cmd_policy)

    bench = sub.add_parser("bench", parents=[common],
                           help="load generator: simulated nodes against a local server")
    bench.add_argument("scenario",
                       choices=["storm", "fanout", "policy", "churn", "memory", "register",
                                "soak"])
    bench.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                       help="storage: SQLite, or a throw-away PostgreSQL started for the run")
    bench.add_argument("--nodes", type=int, default=100)
    bench.add_argument("--events", type=int, default=20)
    bench.add_argument("--rate", type=float, default=10.0, help="churn: events per second")
    bench.add_argument("--self-policy", action="store_true",
                       help="storm: autogroup:member -> autogroup:self:* policy")
    bench.add_argument("--idle", type=int, default=2000,
                       help="soak: idle attacker connections from 127.0.0.2")
    bench.add_argument("--per-ip", type=int, default=None,
                       help="soak: the server's limits.max_connections_per_ip")
    bench.add_argument("--ceiling", type=int, default=None,
                       help="soak: the server's limits.max_connections")
    bench.add_argument("--time-limit", type=float, default=1800.0, help="seconds, then stop")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(fn=cmd_bench)

    db = sub.add_parser("db", parents=[common], help="database tools")
    dbs = db.add_subparsers(dest="action", required=True)
    x = dbs.add_parser("copy", parents=[common],
                       help="copy every row into another, empty database and check each one")
    x.add_argument("--to", required=True, metavar="URL",
                   help="postgres://USER:PASS@HOST:PORT/NAME (?host=/socket/dir, ?sslmode=) "
                   "or sqlite:///PATH")
    x = dbs.add_parser("backup", parents=[common],
                       help="online copy of the SQLite database (safe while serving)")
    x.add_argument("file", help="the backup file to write (must not exist)")
    db.set_defaults(fn=cmd_db)

    plg = sub.add_parser("plugins", parents=[common], help="installed plugins")
    plg.add_subparsers(dest="action", required=True).add_parser("list", parents=[common])
    plg.set_defaults(fn=cmd_plugins)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Admin action names that shadow the list aliases.
    if getattr(args, "action", None) == "ls":
        args.action = "list"
    try:
        result = args.fn(args)
        if isinstance(result, int):
            return result
        data, columns = result
        if isinstance(data, str) and args.output == "table":
            print(data)
        else:
            print(emit(data, args.output, columns))
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
    except ConfigError as exc:
        for problem in config_problems(exc):
            print(f"meshscale: invalid config: {problem}", file=sys.stderr)
        return 2
    except MeshscaleError as exc:
        print(f"meshscale: {explain(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``| head -1``): say so once, and keep the interpreter's final
        # flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("meshscale: output closed before it was all written (broken pipe)",
              file=sys.stderr)
        return 141  # 128 + SIGPIPE, as a shell reports a command a closed pipe ended
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"meshscale: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
