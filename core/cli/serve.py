"""``meshscale serve`` and ``meshscale configtest``: start-up, its banner, and its checks."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

from meshscale import __version__
from meshscale.checks import check_plugin_extras, explain, run_checks
from meshscale.config import Config
from meshscale.configload import load_config
from meshscale.errors import ConfigError, MeshscaleError, config_problems
from meshscale.logs import configure_logging
from meshscale.pluginhost import PluginHost

log = logging.getLogger(__name__)


def banner(config: Config, port: int, admin_socket: str, plugins: Sequence[str],
           config_arg: str | None) -> str:
    """What a person needs once the server runs: where it is, where its data is, how to stop
    it, what to do next."""
    host = config.listen_addr.rpartition(":")[0] or "0.0.0.0"  # noqa: S104 - what it means
    cli = "meshscale" + (f" -c {config_arg}" if config_arg else "")
    return "\n".join([
        f"meshscale {__version__} is running",
        f"  control URL:   {config.server_url}   (clients: tailscale up --login-server "
        f"{config.server_url})",
        f"  listening on:  {host}:{port}" + (" (HTTPS, docs/tls.md)" if config.tls_enabled else ""),
        f"  data dir:      {config.data_path}",
        f"  admin socket:  {admin_socket}",
        f"  plugins:       {', '.join(plugins) or 'none'}",
        f"Stop it with Ctrl-C (or SIGTERM). Next, in another terminal: {cli} users create NAME",
    ])


def serve(config: Config, host: PluginHost, config_arg: str | None) -> int:
    from meshscale.server import Server  # noqa: PLC0415 - the server stack loads on demand

    configure_logging(config)
    for notice in config.notices:  # once, here: admin commands load the config silently
        log.warning("%s", notice)
    check_plugin_extras(config, host)  # the server checks the rest itself, in order

    async def main() -> None:
        from meshscale.memdebug import install_from_env  # noqa: PLC0415

        server = Server(config, host)
        memdebug = install_from_env()  # off unless MESHSCALE_MEMDEBUG is set
        server.trace.open_from_env()  # off unless MESHSCALE_LOOPTRACE is set
        try:
            await server.start()
            server.install_signal_handlers()
            print(banner(config, server.main_port, str(server.admin_socket_path),
                         config.plugins, config_arg), flush=True)
            await server.serve_forever()
            log.info("stopping")
        finally:
            if memdebug is not None:
                memdebug.stop()
            await server.stop()
            server.trace.close()

    asyncio.run(main())
    return 0


def configtest(config_arg: str | None) -> int:
    """Load the config and run every check ``serve`` makes before listening; report all."""
    problems: list[str] = []
    host = PluginHost()

    def sections(names: list[str]) -> Sequence[Any]:
        for name in names:  # one by one: a broken plugin must not hide the others' problems
            try:
                host.load([name])
            except MeshscaleError as exc:
                problems.append(explain(exc))
        try:
            return host.hooks.config_sections()
        except MeshscaleError as exc:
            problems.append(explain(exc))
            return []

    config = None
    try:
        config = load_config(config_arg, sections_for=sections)
    except ConfigError as exc:
        problems += [f"invalid config: {p}" for p in config_problems(exc)]
    if config is not None:
        for notice in config.notices:
            print(f"meshscale: warning: {notice}", file=sys.stderr)
        problems += run_checks(config, host)
    source = config.source if config is not None and config.source else (
        config_arg or "built-in defaults")
    if problems:
        for problem in problems:
            print(f"meshscale: {problem}", file=sys.stderr)
        print(f"configtest: {len(problems)} problem(s) with {source}", file=sys.stderr)
        return 1
    assert config is not None
    print(f"config OK ({source}); plugins: {', '.join(config.plugins) or 'none'}")
    return 0
