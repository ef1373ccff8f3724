"""``meshscale import-headscale``: a headscale database and Noise key into meshscale's.

The headscale side is only read (SQLite opened read-only, PostgreSQL in a read-only session).
meshscale's database must be empty and its server stopped. headscale's Noise private key becomes
meshscale's, so nodes reconnect by themselves: they know the server by that key.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from meshscale.cli.client import AdminClient
from meshscale.cli.common import FORMATS, Out, load, refuse_if_running
from meshscale.cli.hspg import open_postgres
from meshscale.config import Config
from meshscale.configload import build_config, read_yaml
from meshscale.contributions import pick
from meshscale.errors import ConfigError, MeshscaleError
from meshscale.hsimport import Plan, Reader, read_plan
from meshscale.pluginhost import PluginHost
from meshscale.storage.base import (
    Op,
    PutApiKey,
    PutCounter,
    PutKey,
    PutNode,
    PutPolicy,
    PutUser,
)


def _headscale_config(path: str) -> Config:
    try:
        return build_config(read_yaml(Path(path)), source=path)
    except ConfigError as exc:
        raise MeshscaleError(f"headscale config {path}: {exc}") from None


def _open_source(args: argparse.Namespace, hs: Config | None) -> tuple[Any, str, str]:
    """A read-only connection to headscale's database, its dialect, and where it is."""
    target = args.db
    if target is None and hs is not None:
        if hs.database.type == "postgres":
            return open_postgres(hs.database.postgres, None)
        target = str(Path(hs.database.sqlite.path).expanduser())
    if target is None:
        raise MeshscaleError("import-headscale needs --config HEADSCALE_CONFIG or --db PATH|DSN")
    if target.startswith(("postgres://", "postgresql://")):
        return open_postgres(None, target)
    path = Path(target)
    if not path.is_file():
        raise MeshscaleError(f"headscale database {path} not found")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
    return conn, "sqlite", f"SQLite database {path}"


def _noise_source(args: argparse.Namespace, hs: Config | None) -> Path | None:
    if args.noise_key:
        return Path(args.noise_key).expanduser()
    if hs is not None:
        return Path(hs.noise.private_key_path).expanduser()
    return None


def _server_stopped(config: Config) -> None:
    refuse_if_running(AdminClient(str(config.resolve(config.unix_socket)), timeout=5),
                      "meshscale is running: stop it first, import, then start it")


def _ops(plan: Plan) -> list[Op]:
    ops: list[Op] = [PutUser(u) for u in plan.users]
    ops += [PutKey(k) for k in plan.keys]
    ops += [PutNode(n) for n in plan.nodes]
    ops += [PutApiKey(k) for k in plan.api_keys]
    # The counters' names are those of meshscale.state (accounts, store, apikeys).
    for kind, ids in (("user", [u.id for u in plan.users]), ("key", [k.id for k in plan.keys]),
                      ("node", [n.id for n in plan.nodes]),
                      ("apikey", [k.id for k in plan.api_keys])):
        if ids:
            ops.append(PutCounter(kind, max(ids)))
    if plan.policy:
        ops.append(PutPolicy(plan.policy))
    return ops


def _noise_plan(source: Path | None, target: Path) -> tuple[str, bool]:
    """What happens to the Noise key (a line), and whether a copy is needed."""
    if source is None:
        return ("Noise key: none given (--noise-key or --config): nodes must register again",
                False)
    try:
        wanted = source.read_text().strip()
    except OSError as exc:
        raise MeshscaleError(f"headscale's Noise key {source}: {exc.strerror or exc}") from None
    if not wanted.startswith("privkey:") or len(wanted) != len("privkey:") + 64:
        raise MeshscaleError(f"{source} is not a Noise private key (privkey:<64 hex digits>)")
    if target.exists():
        if target.read_text().strip() == wanted:
            return f"Noise key: {target} is headscale's already", False
        raise MeshscaleError(f"meshscale already has its own Noise key {target}: nodes would not "
                             f"reconnect. Move it away (or set noise.private_key_path: {source})")
    return f"Noise key: {source} copied to {target}", True


def _address_warnings(config: Config, plan: Plan) -> list[str]:
    """Addresses outside meshscale's prefixes: the node keeps them, but new nodes are given
    addresses from the prefixes, and nodes missing a family get one by ``nodes backfillips``."""
    nets = [ipaddress.ip_network(config.prefixes.v4), ipaddress.ip_network(config.prefixes.v6)]
    out = []
    for n in plan.nodes:
        for addr in n.addresses:
            if not any(ipaddress.ip_address(addr) in net for net in nets):
                out.append(f"node {n.id} {n.given_name}: {addr} is outside prefixes "
                           f"({', '.join(map(str, nets))}); set prefixes as headscale had them")
        if not (n.ipv4 and n.ipv6):
            out.append(f"node {n.id} {n.given_name}: has no "
                       f"{'IPv6' if n.ipv4 else 'IPv4'} address; 'meshscale nodes backfillips' "
                       "gives it one")
    return out


def cmd_import(args: argparse.Namespace) -> Out:
    config, host = load(args)
    hs = _headscale_config(args.headscale_config) if args.headscale_config else None
    conn, dialect, where = _open_source(args, hs)
    try:
        plan = read_plan(Reader(conn, dialect))
    finally:
        conn.close()
    target_db = config.resolve(config.database.sqlite.path)
    if dialect == "sqlite" and config.database.type in ("sqlite", "sqlite3") and \
            Path(where.removeprefix("SQLite database ")).resolve() == target_db.resolve():
        raise MeshscaleError(f"meshscale's database.sqlite.path is headscale's database "
                             f"{target_db}: give meshscale a database of its own")
    noise_target = config.resolve(config.noise.private_key_path)
    noise_line, copy_key = _noise_plan(_noise_source(args, hs), noise_target)
    if not args.dry_run:
        _server_stopped(config)
        _write(config, host, plan)
        if copy_key:
            source = _noise_source(args, hs)
            assert source is not None
            noise_target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(noise_target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(source.read_text().strip() + "\n")
    warnings = _address_warnings(config, plan)
    summary = {"source": where, "dry_run": bool(args.dry_run), **plan.summary(),
               "noise_key": noise_line, "warnings": warnings}
    if args.output not in ("table", ""):
        return Out(summary)
    verb = "would import" if args.dry_run else "imported"
    lines = [f"{verb} from {where} ({plan.schema}):",
             f"  users: {len(plan.users)} ({', '.join(u.name for u in plan.users) or '-'})",
             f"  nodes: {len(plan.nodes)}"]
    lines += [f"    {line}" for line in summary["nodes"]]
    bcrypt = sum(k.hash_scheme == "bcrypt" for k in plan.keys)
    lines.append(f"  pre-auth keys: {len(plan.keys)}"
                 + (f" ({bcrypt} checked against headscale's bcrypt hashes, "
                    f"{len(plan.keys) - bcrypt} of its plain-text keys hashed)"
                    if plan.keys else ""))
    lines.append(f"  API keys: {len(plan.api_keys)}")
    lines.append(f"  policy: {summary['policy']}"
                 + (" (used with policy.mode: database)" if plan.policy
                    and config.policy.mode != "database" else ""))
    lines.append(f"  {noise_line}")
    lines += [f"  not imported: {line}" for line in plan.left]
    lines += [f"  warning: {line}" for line in warnings]
    if not args.dry_run:
        lines.append("Start meshscale with the same server_url as headscale had; nodes "
                     "reconnect by themselves.")
    return Out("\n".join(lines))


def _write(config: Config, host: PluginHost, plan: Plan) -> None:
    backend = pick(host.hooks.storage_backends(), config.database.type, "database.type",
                   "storage backend")
    storage = backend.open(config)
    try:
        snap = storage.load()
        if snap.users or snap.nodes or snap.keys or (snap.api_keys and plan.api_keys):
            raise MeshscaleError(
                f"meshscale's database already holds {len(snap.users)} user(s), "
                f"{len(snap.nodes)} node(s), {len(snap.keys)} pre-auth key(s) and "
                f"{len(snap.api_keys)} API key(s): import into an empty one")
        storage.apply(_ops(plan))
    finally:
        storage.close()


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    # Not the shared options: --config here is headscale's file (meshscale's is -c before the
    # command, or the usual places).
    about = ("copy a headscale database (users, nodes, pre-auth and API keys, policy) and its "
             "Noise key into an empty meshscale; headscale's side is only read")
    p = sub.add_parser("import-headscale", help=about, description=about)
    p.add_argument("--config", dest="headscale_config", default=None, metavar="FILE",
                   help="headscale's config.yaml: where its database and Noise key are")
    p.add_argument("--db", default=None, metavar="PATH|DSN",
                   help="headscale's SQLite file or postgres://USER:PASS@HOST/NAME "
                   "(instead of the one in --config)")
    p.add_argument("--noise-key", default=None, metavar="FILE",
                   help="headscale's noise_private.key (instead of the one in --config)")
    p.add_argument("--dry-run", action="store_true", help="print what would be imported; "
                   "change nothing")
    p.add_argument("-o", "--output", choices=FORMATS, default=argparse.SUPPRESS,
                   help="output format: text (default), json, json-line or yaml")
    p.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="accepted everywhere; import-headscale asks nothing")
    p.set_defaults(fn=cmd_import)
