"""Composition root: one server's lifespan, building its parts in order and stopping them.

Lifespan in three steps, like Quart's: ``start`` (setup), ``serve_forever`` (yield), ``stop``
(teardown); and what changes while it runs (a new policy, SIGHUP's reloads). Tests build a
Server in-process with exactly the plugins they name. The parts it holds and the views plugins
read of them are ``serverparts.py``; building storage, state and policy from stored records
(also the oracle tests' fresh start) is ``assembly.py``; the admin socket file is
``api/adminsocket.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import socket
import ssl
from pathlib import Path

from meshscale import assembly, checks
from meshscale.alloc import trim_periodically
from meshscale.api.adminsocket import AdminSocket
from meshscale.api.openapi import openapi_routes
from meshscale.api.remoteadmin import remote_admin_routes
from meshscale.api.rest import rest_routes
from meshscale.config import Config
from meshscale.configload import load_config
from meshscale.configvalues import split_host_port
from meshscale.control.plane import ControlPlane
from meshscale.datadir import DataDirLock, ensure_data_dir
from meshscale.derpmap import DerpMapManager
from meshscale.dns.settings import DnsSettings
from meshscale.errors import ConfigError, MeshscaleError, PluginError, PolicyError
from meshscale.events import PolicyEvent
from meshscale.limits import connection_ceiling, raise_fd_limit
from meshscale.listener import Listener
from meshscale.mapper.mapper import Mapper
from meshscale.noise.handshake import public_bytes
from meshscale.pluginhost import PluginHost
from meshscale.policy import Affected, PolicyEngine
from meshscale.serverparts import ServerParts
from meshscale.state.apikeys import ApiKeys
from meshscale.state.changes import DerpMapChanged, DnsChanged, PolicyChanged
from meshscale.state.lifecycle import NodeLifecycle
from meshscale.state.store import State
from meshscale.storage.base import PutPolicy, Snapshot
from meshscale.tls import MainTls
from meshscale.tls.listener import peek_hello
from meshscale.tls.redirect import RedirectPort
from meshscale.transport import FrontDoor
from meshscale.web import create_app
from meshscale.workers.link import WorkerPool

log = logging.getLogger(__name__)


class Server(ServerParts):
    """One meshscale instance: builds its parts (``ServerParts``, which also implements
    ServerContext for plugins), serves, and stops them."""

    def __init__(self, config: Config, host: PluginHost) -> None:
        super().__init__(config, host)
        self._stopped = asyncio.Event()
        self._started_plugins = False
        self._lock: DataDirLock | None = None
        self._admin: AdminSocket | None = None
        host.bind(self)  # the plugins' ServerContext is this server from now on

    # -- setup -------------------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self._config
        data = cfg.data_path
        # Refusals come before anything is written: one server per data directory (the lock),
        # then the TLS files and the port; only then keys, database and plugins.
        ensure_data_dir(data)
        self._lock = DataDirLock(data)
        self._lock.acquire()
        checks.check_tls(cfg, self.host)
        if cfg.tls_enabled and not cfg.server_url.startswith("https://"):
            log.warning("server_url %s is not https:// but listen_addr speaks HTTPS: clients "
                        "given this URL cannot connect; make it https://", cfg.server_url)
        if cfg.tls_enabled:
            self.main_tls = MainTls(cfg)
            if self.main_tls.files is not None:
                self.main_tls.load_files()
        # Bound now, accepting only once everything behind it is ready.
        main = await self._bind_main()
        bound: list[asyncio.Server | Listener] = [main]
        self.listeners.append(main)
        self.main_port = main.port
        if cfg.tls_enabled and cfg.plain_http_addr:
            bound.append(await self._bind_plain(cfg.plain_http_addr))
            self.listeners.append(bound[-1])
        # The embedded DERP's own ports, too (the plugins bind them at startup).
        checks.check_derp_ports(cfg, self.host)
        self._admin = AdminSocket(self.admin_socket_path, cfg.unix_socket_permission)
        self._admin.is_stale()  # refused here, before keys, database and plugins
        noise_key = assembly.load_private_key(cfg.resolve(cfg.noise.private_key_path))

        self.storage = assembly.open_storage(cfg, self.host.hooks)
        snap = await asyncio.to_thread(self.storage.load)
        state, engine, text = self.build_core(snap)
        self.state, self.engine, self.policy_text = state, engine, text
        if state.pending and cfg.node.approval != "manual":
            log.warning("%d node(s) wait for approval although node.approval is %s: approve "
                        "them with `meshscale nodes approve -i ID` (nodes list: Approved no)",
                        len(state.pending), cfg.node.approval)
        self.apikeys = ApiKeys(self.storage, snap)
        self.dns = self.build_dns(snap)

        self.derp = self._make_derp_manager()
        self.mapper = Mapper(
            cfg, state, self.engine, self.derp_map,
            notify=self.host.hooks.map_sent, dns=self.dns.in_force, trace=self.trace,
        )
        self.lifecycle = lifecycle = NodeLifecycle(cfg, state, self.host.hooks)
        self.plane = ControlPlane(cfg, state, self.mapper, self.engine, self.host, lifecycle,
                                  policy_loaded=lambda: self.policy_text is not None)
        self.mapper.dns.cert_domains = bool(self.plane.set_dns.providers)

        await self.host.hooks.startup()
        self._started_plugins = True
        if self.derp is not None:
            await self.derp.refresh()
            self.derp.add_listener(lambda _m: state.publish(DerpMapChanged()))
            if cfg.derp.auto_update_enabled:
                self.spawn(self.derp.run(), "derp-map-updates")
        self.dns.add_listener(lambda: state.publish(DnsChanged()))
        self.spawn(self.dns.watch(), "dns-extra-records-watch")

        routes = [*self.host.hooks.http_routes(cfg), *self.plane.logins.routes(),
                  *rest_routes(self), *openapi_routes(),
                  *remote_admin_routes(self)]
        upgrades = self.host.hooks.http_upgrades(cfg)
        app = create_app(public_bytes(noise_key), routes, self._health_problem)
        ceiling = connection_ceiling(cfg.limits.max_connections, raise_fd_limit())
        if ceiling < cfg.limits.max_connections:
            log.info("limits.max_connections lowered to %d by the open-file limit", ceiling)
        if cfg.workers:
            self.workers = WorkerPool(cfg.workers, noise_key, cfg.limits, self.plane.handle,
                                      cfg.log.format)
            await self.workers.start()
            log.info("%d connection workers started (pids %s)", cfg.workers,
                     ", ".join(map(str, self.workers.pids())))
        self.front = FrontDoor(noise_key, self.plane.handle, app, upgrades, cfg.limits,
                               max_connections=ceiling,
                               tls=None if self.main_tls is None else self._tls_context,
                               workers=self.workers)
        await self._start_admin()
        for listener in bound:
            if isinstance(listener, Listener):
                listener.start()
            else:
                await listener.start_serving()
        if self.main_tls is not None and self.main_tls.files is not None:
            self.spawn(self.main_tls.watch(), "tls-certificate-watch")

        # Everything loaded so far lives as long as the server: keep it out of the cyclic
        # collector's scans, and collect young objects less often. At thousands of streams
        # full collections otherwise show up as latency spikes in fan-outs.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        lifecycle.schedule_offline_ephemerals()
        self.spawn(lifecycle.run_expiry(), "key-expiry")
        self.spawn(trim_periodically(), "heap-trim")  # after storms and fan-outs (alloc.py)
        log.info(
            "meshscale listening on %s (port %d), data in %s, plugins: %s",
            cfg.listen_addr, self.main_port, data, ", ".join(self.host.names()) or "none",
        )

    def build_core(self, snap: Snapshot) -> tuple[State, PolicyEngine, str | None]:
        """State and a policy engine built from stored records, as at start-up.

        The start-up path, and the oracle tests' "fresh computation": whatever a running
        server derives incrementally must equal what this builds from the same database.
        """
        assert self.storage is not None
        return assembly.build_core(self._config, self.host.hooks, self.storage, snap)

    def build_dns(self, snap: Snapshot) -> DnsSettings:
        """The DNS settings in force, as at start-up (``assembly.build_dns``)."""
        return assembly.build_dns(self._config, self.storage, snap)

    async def _bind_main(self) -> Listener:
        cfg = self._config
        host, port = split_host_port(cfg.listen_addr)
        try:
            return Listener.bind(host, port, self._accepted, self._exhausted)
        except OSError as exc:
            raise MeshscaleError(checks.listen_refusal(cfg.listen_addr, exc)) from None
    async def _bind_plain(self, addr: str) -> asyncio.base_events.Server:
        assert self.main_tls is not None
        key = ("tls_redirect_listen_addr" if self._config.tls_redirect_listen_addr
               else "tls_letsencrypt_listen")
        host, port = split_host_port(addr)
        port_handler = RedirectPort(self._config.server_url, self.main_tls.http01)
        try:
            plain = await asyncio.start_server(port_handler, host, port, backlog=1024,
                                               start_serving=False)
        except OSError as exc:
            raise MeshscaleError(checks.listen_refusal(addr, exc, key)) from None
        self.plain_port = plain.sockets[0].getsockname()[1]
        return plain

    def _accepted(self, conn: socket.socket, ip: str) -> None:
        assert self.front is not None  # accepting starts after the front door is built
        self.front.accepted(conn, ip)

    async def _tls_context(self, conn: socket.socket) -> ssl.SSLContext:
        """The certificate in force for this connection, chosen from its ClientHello."""
        assert self.main_tls is not None
        return self.main_tls.context_for(await peek_hello(conn))

    def _exhausted(self, exc: OSError) -> None:
        if self.front is not None:
            self.front.exhausted(exc)

    def _make_derp_manager(self) -> DerpMapManager:
        return DerpMapManager(self._config, self.host.hooks.derp_regions)

    async def _start_admin(self) -> None:
        from meshscale.api.admin import create_admin_app  # noqa: PLC0415

        assert self._admin is not None
        self.listeners.append(await self._admin.serve(create_admin_app(self)))

    @property
    def admin_socket_path(self) -> Path:
        return self._config.resolve(self._config.unix_socket)

    # -- policy --------------------------------------------------------------------------------

    def _policy_affected(self, affected: Affected) -> None:
        if (affected.everyone or affected.nodes) and self.state is not None:
            self.state.publish(PolicyChanged(affected))

    def set_policy(self, text: str, source: str, persist: bool) -> None:
        """Install a new policy atomically; PolicyError leaves everything as it was."""
        assert self.state is not None
        if self.mapper is not None:
            # Changes still pending belong to the old policy: deliver them under it first.
            self.mapper.flush()
        try:
            affected = self.engine.set_policy(text)
        except PolicyError as exc:
            self.host.hooks.policy_event(PolicyEvent(False, source, str(exc)))
            raise
        if persist and self.storage is not None:
            try:
                self.storage.apply([PutPolicy(text)])
            except Exception:
                self.engine.set_policy(self.policy_text)  # not stored: not in force either
                raise
        self.policy_text = text
        self.host.hooks.policy_event(PolicyEvent(True, source))
        # autoApprovers may approve or withdraw routes; then every stream gets its new view.
        self.state.refresh_auto_approvals()
        self._policy_affected(affected)

    def reload(self) -> None:
        """SIGHUP: the policy file, the TLS certificate files and the config file's dns
        section, each kept if the new is bad."""
        self.reload_policy_file()
        if self.main_tls is not None:
            self.main_tls.reload()
        self.reload_dns()

    def reload_dns(self) -> None:
        """The config file's ``dns:`` section again (other keys still need a restart)."""
        source = self._config.source
        if self.dns is None or not source:
            return
        try:
            fresh = load_config(source, sections_for=lambda _names: self.host.hooks
                                .config_sections())
        except ConfigError as exc:
            log.error("SIGHUP: %s is invalid, keeping the DNS settings in force: %s",
                      source, exc)
            return
        if fresh.dns != self.dns.file_section:
            log.info("SIGHUP: the dns section of %s is read again", source)
        self.dns.reload(dataclasses.replace(self._config, dns=fresh.dns))
        # The section in force is the server's config from now on (what a start would read).
        self._config = dataclasses.replace(self._config, dns=self.dns.file_section)

    def reload_policy_file(self) -> None:
        cfg = self._config.policy
        if cfg.mode != "file" or not cfg.path:
            log.info("SIGHUP: no policy file configured; nothing to reload")
            return
        path = self._config.resolve(cfg.path)
        try:
            text = path.read_text(encoding="utf-8")
            self.set_policy(text, "file", persist=False)
            log.info("policy reloaded from %s", path)
        except (OSError, PolicyError) as exc:
            log.error("policy reload from %s refused, keeping the old policy: %s", path, exc)

    # -- run and stop ----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM stop the server, SIGHUP reloads. Installed before the banner is
        printed: whoever reads the banner may signal at once, and the default action would
        kill the process without stopping it cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopped.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)

    async def serve_forever(self) -> None:
        self.install_signal_handlers()
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        for listener in self.listeners:
            listener.close()
        if self.plane is not None:
            self.plane.logins.pending.close()  # waiting clients are told, timers cancelled
            self.plane.checks.close()
        if self.front is not None:
            for task in list(self.front.connections):
                task.cancel()
        if self.workers is not None:
            await self.workers.stop()  # their connections close; no worker outlives us
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._started_plugins:
            self._started_plugins = False  # shutdown runs once, however often stop is called
            try:
                await self.host.hooks.shutdown()
            except PluginError:
                log.exception("a plugin failed to shut down cleanly")
        if self.storage is not None:
            self.storage.close()
        if self._admin is not None:
            self._admin.remove()
        if self._lock is not None:
            self._lock.release()
