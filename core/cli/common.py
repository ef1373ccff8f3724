"""What every command group of the CLI shares: loading the config, the admin client, the result
type, the global options and the confirmation prompt of destructive commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshscale.cli.client import AdminClient, admin_client
from meshscale.cli.output import Column
from meshscale.config import Config
from meshscale.configload import load_config
from meshscale.errors import MeshscaleError
from meshscale.pluginhost import PluginHost

Columns = Sequence[Column]
# Output formats: headscale's (empty: human-readable) plus meshscale's name for that, "table".
FORMATS = ["table", "", "json", "json-line", "yaml"]
MACHINE_FORMATS = ("json", "json-line", "yaml")


@dataclass(frozen=True)
class Out:
    """What a command prints: ``data`` as a table (``columns``) or text, or in headscale's shape
    of ``kind`` (user, node, preauthkey) under -o json/json-line/yaml."""

    data: Any
    kind: str | None = None
    columns: Columns = field(default_factory=list)


def load(args: argparse.Namespace) -> tuple[Config, PluginHost]:
    """Config with plugin sections: plugins are loaded first so they can claim their keys."""
    host = PluginHost()

    def sections(names: list[str]) -> Sequence[Any]:
        host.load(names)
        return host.hooks.config_sections()

    return load_config(args.config, sections_for=sections), host


def client(args: argparse.Namespace) -> AdminClient:
    """The server's admin API: the local unix socket, or cli.address (meshscale.cli.client)."""
    config, _ = load(args)  # with plugin sections: their keys are not "unknown"
    return admin_client(config)


def local_client(args: argparse.Namespace, command: str) -> AdminClient:
    """For ``command``, which works on this machine's files: the local socket, and a one-line
    refusal when the CLI is pointed at a remote server."""
    config, _ = load(args)
    c = admin_client(config)
    if c.remote:
        raise MeshscaleError(f"{command} works on the server's own machine only: unset "
                             "cli.address / MESHSCALE_CLI_ADDRESS and run it there")
    return c


def confirm(args: argparse.Namespace, prompt: str) -> None:
    """Ask before a destructive command, as headscale does; ``--force`` skips the question.
    Without a terminal to ask on, the command is refused rather than guessed."""
    if getattr(args, "force", False):
        return
    if not sys.stdin.isatty():
        raise MeshscaleError(f"{prompt} needs a yes on a terminal: add --force to run it "
                             "without asking")
    print(f"{prompt} [y/n] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise MeshscaleError("aborted: nothing was changed")


def global_options(defaults: bool) -> argparse.ArgumentParser:
    """-c, -o and --force work before or after the subcommand; on subparsers they default to
    SUPPRESS so a value given before the subcommand is not overwritten."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "-c", "--config", default=None if defaults else argparse.SUPPRESS,
        help="config file (default: $MESHSCALE_CONFIG, ./config.yaml, "
        "~/.config/meshscale/config.yaml, /etc/meshscale/config.yaml, then headscale's "
        "/etc/headscale/config.yaml, ~/.headscale/config.yaml)")
    parser.add_argument(
        "-o", "--output", choices=FORMATS, default="table" if defaults else argparse.SUPPRESS,
        help="output format: a table for people (default), or json, json-line or yaml with "
        "headscale's field names")
    parser.add_argument(
        "--force", action="store_true", default=False if defaults else argparse.SUPPRESS,
        help="do not ask for confirmation before destructive commands")
    return parser


def add(sub: Any, name: str, help: str, common: argparse.ArgumentParser,
        aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A subcommand with its one-line description (shown in the parent's --help) and the
    global options."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, aliases=list(aliases), parents=[common], help=help, description=help)
    return parser


def refuse_if_running(c: AdminClient, message: str) -> None:
    """For commands that write the database behind the server's back: refuse with ``message``
    when a server answers on the admin socket (any other failure of the call is raised)."""
    try:
        c.call("GET", "/v1/health")
    except MeshscaleError as exc:
        if "cannot reach the server" not in str(exc):
            raise
    else:
        raise MeshscaleError(message)
