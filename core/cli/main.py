"""``meshscale``: the command tree (headscale's habits: its command names, aliases, flags and
``-o json | json-line | yaml``), output and errors. Each command group lives in its module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from meshscale.checks import explain
from meshscale.cli import (
    apikeys,
    auth,
    dns,
    hsjson,
    imporths,
    nodes,
    policy,
    preauthkeys,
    serve,
    tools,
    users,
)
from meshscale.cli.common import MACHINE_FORMATS, Out, add, global_options, load
from meshscale.cli.output import emit, use_colour
from meshscale.errors import ConfigError, MeshscaleError, config_problems


def cmd_serve(args: argparse.Namespace) -> int:
    config, host = load(args)
    return serve.serve(config, host, args.config)


def cmd_configtest(args: argparse.Namespace) -> int:
    return serve.configtest(args.config)


def build_parser() -> argparse.ArgumentParser:
    common = global_options(defaults=False)
    p = argparse.ArgumentParser(prog="meshscale", parents=[global_options(defaults=True)],
                                description="A self-hosted Tailscale control server.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add(sub, "serve", "run the server", common).set_defaults(fn=cmd_serve)
    add(sub, "configtest", "check the config and everything serve checks, then exit",
        common).set_defaults(fn=cmd_configtest)
    for group in (users, nodes, auth, preauthkeys, apikeys, policy, dns, tools, imporths):
        group.register(sub, common)
    return p


def _print(out: Out, fmt: str) -> None:
    if fmt in MACHINE_FORMATS:
        print(hsjson.render(hsjson.shape(out.data, out.kind), fmt, go_names=bool(out.kind)))
    elif isinstance(out.data, str):
        print(out.data)
    else:
        print(emit(out.data, "table", out.columns, colour=use_colour(sys.stdout)))


def _error(message: str, fmt: str) -> None:
    """One line for a person; ``{"error": ...}`` under -o json/json-line/yaml, as headscale."""
    if fmt in MACHINE_FORMATS:
        print(hsjson.render({"error": message}, fmt, go_names=False), file=sys.stderr)
    else:
        print(f"meshscale: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # An alias typed (``ls``, ``del``, ``show``) names its action.
    action = getattr(args, "action", None)
    args.action = getattr(args, "aliases", {}).get(action, action)
    fmt = args.output
    try:
        result = args.fn(args)
        if isinstance(result, int):
            return result
        _print(result, fmt)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
    except ConfigError as exc:
        for problem in config_problems(exc):
            _error(f"invalid config: {problem}", fmt)
        return 2
    except MeshscaleError as exc:
        _error(explain(exc), fmt)
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
        _error(f"{where}{exc.strerror or exc}", fmt)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
