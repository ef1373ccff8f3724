"""``meshscale db copy --to URL``: the CLI side of meshscale.storage.copy."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from meshscale.cli.client import AdminClient
from meshscale.cli.common import refuse_if_running
from meshscale.config import Config
from meshscale.contributions import pick
from meshscale.pluginhost import PluginHost
from meshscale.storage.base import Storage

Loader = Callable[[argparse.Namespace], tuple[Config, PluginHost]]


def _describe(config: Config) -> str:
    if config.database.type == "postgres":
        return config.database.postgres.describe()
    return f"SQLite database {config.resolve(config.database.sqlite.path)}"


def _open(config: Config, host: PluginHost) -> Storage:
    name = config.database.type
    plugin = "sqlite" if name == "sqlite3" else name
    if plugin not in host.names():
        host.load([plugin])  # the target's backend need not be in plugins: (not in use yet)
    backend = pick(host.hooks.storage_backends(), name, "database.type", "storage backend")
    return backend.open(config)


def cmd_db_copy(args: argparse.Namespace, load: Loader) -> Any:
    from meshscale.storage.copy import config_for_url, copy_database  # noqa: PLC0415

    config, host = load(args)
    refuse_if_running(AdminClient(str(config.resolve(config.unix_socket)), timeout=5),
                      "the server is running: stop it first (a copy of a database "
                      "that is being written would be out of date at once)")
    target_config = config_for_url(config, args.to)
    source = _open(config, host)
    try:
        target = _open(target_config, host)
        try:
            counts = copy_database(source, target)
        finally:
            target.close()
    finally:
        source.close()
    summary = ", ".join(f"{n} {table}" for table, n in counts.items())
    return (f"copied {_describe(config)} to {_describe(target_config)}: {summary}; every row "
            f"checked. Set database.type: {target_config.database.type} (and its keys) in the "
            "config, then start the server; the files in data_dir (keys) stay as they are")
