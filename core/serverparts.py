"""The parts one running server holds, and what plugins and the admin API read of them.

``ServerParts`` is the holder of storage, state, policy engine, mapper, control plane, DERP map,
DNS settings, listeners and background tasks, with the ServerContext (``context.py``) and
AdminServer (``api/admin.py``) views over them: stats, node (``api/adminviews.py``) and
map-session views, the DERP map, ``spawn``. ``Server`` (``server.py``) is the one subclass: it
builds these parts in start-up order, installs policies and reloads while running, and stops
them; the reading side is here so that the lifecycle reads top to bottom on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshscale.api.adminviews import node_view
from meshscale.auth import Logins
from meshscale.config import Config
from meshscale.control.plane import ControlPlane
from meshscale.derpmap import DerpMapManager
from meshscale.dns.settings import DnsSettings
from meshscale.errors import MeshscaleError, PluginError
from meshscale.listener import Listener
from meshscale.looptrace import LoopTrace
from meshscale.mapper.mapper import Mapper
from meshscale.pluginhost import PluginHost
from meshscale.policy import AllowAllEngine, PolicyEngine
from meshscale.state.apikeys import ApiKeys
from meshscale.state.lifecycle import NodeLifecycle
from meshscale.state.store import State
from meshscale.storage.base import Storage
from meshscale.tls import MainTls
from meshscale.transport import FrontDoor
from meshscale.workers.link import WorkerPool

# The messages here keep the logger they had when this was part of server.py.
log = logging.getLogger("meshscale.server")


class ServerParts:
    """The parts of one server (None until ``Server.start`` builds them). Implements
    ServerContext for plugins."""

    def __init__(self, config: Config, host: PluginHost) -> None:
        self._config = config
        self.host = host
        self.storage: Storage | None = None
        self.state: State | None = None
        self.engine: PolicyEngine = AllowAllEngine()
        self.mapper: Mapper | None = None
        self.lifecycle: NodeLifecycle | None = None
        self.apikeys: ApiKeys | None = None
        self.plane: ControlPlane | None = None
        self.derp: DerpMapManager | None = None
        self.dns: DnsSettings | None = None
        self.front: FrontDoor | None = None
        self.workers: WorkerPool | None = None
        self.listeners: list[asyncio.Server | Listener] = []
        self.main_tls: MainTls | None = None
        self.plain_port = 0  # the plain-HTTP redirect/ACME port, when there is one
        self.tasks: set[asyncio.Task[None]] = set()
        self.main_port = 0
        self.policy_text: str | None = None
        self.trace = LoopTrace()  # off unless opened (MESHSCALE_LOOPTRACE, cli/serve.py)

    # -- ServerContext ---------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @property
    def data_dir(self) -> Path:
        return self._config.data_path

    def tls(self) -> MainTls | None:
        return self.main_tls

    def node_key_known(self, node_key: bytes) -> bool:
        node = self.state.by_node_key(node_key) if self.state else None
        return node is not None and not node.expired()

    def derp_map(self) -> Mapping[str, Any]:
        if self.derp is None:
            return {"Regions": {}, "omitDefaultRegions": True}
        result: Mapping[str, Any] = self.derp.current()
        return result

    def refresh_derp_map(self) -> None:
        if self.derp is not None:
            self.spawn(self._refresh_derp(), "derp-map-refresh")

    async def _refresh_derp(self) -> None:
        if self.derp is not None:
            await self.derp.refresh()

    def _health_problem(self) -> str | None:
        # A storage backend that can lose its database says so with ``available``.
        if self.storage is not None and not getattr(self.storage, "available", True):
            return "the database is unreachable: changes are refused until it is back"
        return None

    def stats(self) -> Mapping[str, float]:
        state = self.state
        if state is None or self.mapper is None:
            return {}
        out = {
            "nodes_total": float(len(state.nodes)),
            "nodes_online": float(sum(1 for n in state.nodes.values() if n.online)),
            "users_total": float(len(state.users)),
            "map_streams": float(self.mapper.stream_count()),
        }
        try:
            parts = self.host.hooks.stats()
        except PluginError:
            # A scrape or health check must still get core's numbers.
            log.exception("a plugin's meshscale_stats failed; reporting core's values only")
            parts = []
        for part in parts:
            out.update(part)
        if self.main_tls is not None:
            out.update(self.main_tls.stats())
        return out

    def nodes(self) -> Sequence[Mapping[str, Any]]:
        state = self.state
        if state is None:
            return []
        return [node_view(n, state.owner(n.user_id))
                for n in state.nodes_sorted()]

    def map_sessions(self) -> Sequence[Mapping[str, Any]]:
        if self.mapper is None:
            return []
        return [
            {"nodeId": s.node_id, "sent": dict(s.sent), "overflows": s.overflows,
             "known": s.known_ids()}
            for s in self.mapper.sessions.values()
        ]

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    def plugin(self, name: str) -> object | None:
        return self.host.plugin(name)

    def logins(self) -> Logins:
        if self.plane is None:
            raise MeshscaleError("the server is not running yet")
        return self.plane.logins
