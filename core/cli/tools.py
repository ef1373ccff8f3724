"""Commands beside the admin groups: version, health, generate, dump-config, plugins, bench and
db."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from meshscale import __version__
from meshscale.cli.common import Out, add, client, load
from meshscale.config import Config
from meshscale.configload import load_raw
from meshscale.errors import MeshscaleError
from meshscale.logs import configure_logging
from meshscale.pluginhost import PluginHost, available_plugins


def cmd_version(args: argparse.Namespace) -> Out:
    return Out({"version": __version__}, None, [("Version", "version")])


def cmd_health(args: argparse.Namespace) -> Out:
    """As headscale's: exit 0 when the server answers and its database takes writes."""
    result = client(args).call("GET", "/v1/health")
    return Out({"database_connectivity": result.get("status") == "pass"}, None,
               [("Database connectivity", "database_connectivity")])


def cmd_generate(args: argparse.Namespace) -> Out:
    """A Noise private key in headscale's (and meshscale's) file format, ``privkey:<hex>``."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (  # noqa: PLC0415
        X25519PrivateKey,
    )

    text = "privkey:" + X25519PrivateKey.generate().private_bytes_raw().hex()
    return Out(text if args.output in ("table", "") else {"private_key": text})


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {("global" if f.name == "global_" else f.name): _plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.name not in ("plugin_sections", "source", "notices")}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return str(value)
    return value


def cmd_dump_config(args: argparse.Namespace) -> Out:
    """The config as meshscale reads it (every key, defaults filled in, headscale's old names
    translated); the PostgreSQL password and cli.api_key are left out."""
    config, _ = load(args)
    data = _plain(config)
    if data["database"]["postgres"].get("password"):
        data["database"]["postgres"]["password"] = "(set)"  # noqa: S105 - a mask, not a password
    if data["cli"].get("api_key"):
        data["cli"]["api_key"] = "(set)"
    if args.output in ("table", ""):
        return Out(yaml.safe_dump(data, sort_keys=False).rstrip())
    return Out(data)


def cmd_plugins(args: argparse.Namespace) -> Out:
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
    return Out(out, None, [("Name", "name"), ("Enabled", "enabled"), ("Version", "version"),
                 ("Distribution", "distribution"), ("Hooks", "hooks")])


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give events per second, e.g. 10 or 2,5,10") from None
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"{text!r}: rates must be above 0")
    return rates


def cmd_bench(args: argparse.Namespace) -> Out | int:
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
    if args.scenario in ("storm", "fanout", "policy", "churn", "memory"):
        kwargs["policy"] = args.policy
    elif args.policy != "allow-all":
        raise MeshscaleError(f"--policy applies to storm, fanout, policy, churn and memory, "
                             f"not {args.scenario}")
    if args.scenario == "storm" and args.self_policy:
        kwargs["policy"] = "self"
    if args.scenario == "churn":
        kwargs["rate"] = args.rate[0] if len(args.rate) == 1 else args.rate
    if args.profile:
        if args.scenario not in ("storm", "fanout"):
            raise MeshscaleError("--profile is for the storm and fanout scenarios")
        kwargs["profile"] = args.profile
    if args.workers:
        if args.scenario not in ("storm", "fanout"):
            raise MeshscaleError("--workers is for the storm and fanout scenarios")
        kwargs["workers"] = args.workers
    if args.scenario == "soak":
        kwargs.update(idle=args.idle, per_ip=args.per_ip, ceiling=args.ceiling)
    result = asyncio.run(asyncio.wait_for(SCENARIOS[args.scenario](**kwargs), args.time_limit))
    if args.json:
        print(json.dumps(result))
        return 0
    return Out(result, None, [(k, k) for k in result if k != "curve"])


def cmd_db(args: argparse.Namespace) -> Out:
    if args.action == "backup":
        from meshscale.cli.backup import backup  # noqa: PLC0415

        config, _ = load(args)
        return Out(backup(config, Path(args.file)))
    from meshscale.cli.db import cmd_db_copy  # noqa: PLC0415

    return Out(cmd_db_copy(args, load))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    add(sub, "version", "print the version", common).set_defaults(fn=cmd_version)
    add(sub, "health", "check that the server answers and its database takes writes", common) \
        .set_defaults(fn=cmd_health)
    gen = add(sub, "generate", "generate keys", common, aliases=["gen"])
    gs = gen.add_subparsers(dest="action", required=True, metavar="ACTION")
    add(gs, "private-key", "print a new Noise private key (privkey:HEX, noise.private_key_path's "
        "format)", common)
    gen.set_defaults(fn=cmd_generate)
    add(sub, "dump-config", "print the config as meshscale reads it, defaults filled in", common,
        aliases=["dumpConfig"]).set_defaults(fn=cmd_dump_config)

    bench = add(sub, "bench", "load generator: simulated nodes against a local server", common)
    bench.add_argument("scenario",
                       choices=["storm", "fanout", "policy", "churn", "memory", "register",
                                "floor", "shards"],
                       help="what to measure")
    bench.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                       help="storage: SQLite, or a throw-away PostgreSQL started for the run")
    bench.add_argument("--nodes", type=int, default=100, help="simulated nodes")
    bench.add_argument("--events", type=int, default=20, help="changes to send")
    bench.add_argument("--rate", type=_rates, default=[10.0],
                       help="churn: events per second; several (2,5,10) run one after the "
                       "other on the same fleet")
    bench.add_argument("--policy", choices=["allow-all", "restrictive"], default="allow-all",
                       help="allow-all, or a company-like policy (teams, tag groups, "
                       "autogroup:self) where each node sees about 10 %% of the others")
    bench.add_argument("--self-policy", action="store_true",
                       help="storm: autogroup:member -> autogroup:self:* policy")
    bench.add_argument("--workers", type=int, default=0, metavar="N",
                       help="storm, fanout: the server runs N connection workers (config "
                            "workers); their CPU is reported beside the owner's")
    bench.add_argument("--time-limit", type=float, default=1800.0, help="seconds, then stop")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--profile", metavar="FILE",
                       help="storm, fanout: sample the server with py-spy while measuring; "
                       "raw stacks to FILE, top functions in the figures")
    bench.set_defaults(fn=cmd_bench)

    db = add(sub, "db", "database tools", common)
    dbs = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    x = add(dbs, "copy", "copy every row into another, empty database and check each one",
            common)
    x.add_argument("--to", required=True, metavar="URL",
                   help="postgres://USER:PASS@HOST:PORT/NAME (?host=/socket/dir, ?sslmode=) "
                   "or sqlite:///PATH")
    x = add(dbs, "backup", "online copy of the SQLite database (safe while serving)", common)
    x.add_argument("file", help="the backup file to write (must not exist)")
    db.set_defaults(fn=cmd_db)

    plg = add(sub, "plugins", "installed plugins", common)
    plg.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "list", parents=[common], help="list installed plugins, enabled or not, and their hooks")
    plg.set_defaults(fn=cmd_plugins)
