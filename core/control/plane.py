"""The control plane: routes ``/machine/*`` requests to register and poll (the map endpoint).

One per server. Handlers receive the Noise session's machine key with every request and check
that any node key in the body belongs to it.
"""

from __future__ import annotations

from collections.abc import Callable

from meshscale.clientinput import Limits, parse_register
from meshscale.config import Config
from meshscale.control.body import typed_body
from meshscale.control.interactive import InteractiveLogins
from meshscale.control.poll import MapPoll
from meshscale.control.register import NeedsLogin, Registrar, handle_register
from meshscale.control.request import ControlRequest, ResponseWriter
from meshscale.control.setdns import SetDNS
from meshscale.control.sshcheck import SSHChecks
from meshscale.mapper.frames import Message
from meshscale.mapper.mapper import Mapper
from meshscale.pluginhost import PluginHost
from meshscale.policy import PolicyEngine
from meshscale.state.lifecycle import NodeLifecycle
from meshscale.state.store import State

JSON = "application/json"


class ControlPlane:
    def __init__(
        self,
        config: Config,
        state: State,
        mapper: Mapper,
        engine: PolicyEngine,
        host: PluginHost,
        lifecycle: NodeLifecycle,
        policy_loaded: Callable[[], bool] = lambda: False,
    ) -> None:
        self.limits = Limits(
            hostinfo_max_bytes=config.client_limits.hostinfo_max_bytes,
            endpoints_max=config.client_limits.endpoints_max,
        )
        self.registrar = Registrar(state, lifecycle, engine, host.hooks, policy_loaded)
        self.logins = InteractiveLogins(self.registrar, str(config.server_url),
                                        float(config.node.auth_id_expiry),
                                        config.limits.max_pending_logins,
                                        host.hooks.auth_providers(config))
        self.checks = SSHChecks(state, engine, str(config.server_url),
                                float(config.node.auth_id_expiry),
                                config.limits.max_pending_logins, self.logins.url)
        self.logins.checks = self.checks
        self.set_dns = SetDNS(state, lambda: config.dns.base_domain,
                              host.hooks.dns01_providers(config), self.limits)
        self.poll = MapPoll(config, state, mapper, host.hooks, lifecycle, self.limits)

    async def handle(self, req: ControlRequest, resp: ResponseWriter) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/machine/register":
            await self._register(req, resp)
        elif path == "/machine/map":
            await self.poll.handle(req, resp)
        elif path == "/machine/set-dns":
            await self.set_dns.handle(req, resp)
        elif path.startswith("/machine/ssh/action/"):
            await self.checks.handle(req, resp)
        else:
            # Endpoints we do not implement are, to a client, endpoints that do not exist: a
            # clean, immediate 404 (never a hang), as headscale answers.
            await resp.send(404, f"{path[:200]} not found\n".encode(), "text/plain")

    async def _register(self, req: ControlRequest, resp: ResponseWriter) -> None:
        parsed = await typed_body(req, resp, parse_register, self.limits)
        if parsed is None:
            return
        try:
            out = handle_register(self.registrar, req.machine_key, parsed)
        except NeedsLogin:
            out = await self.logins.login(req.machine_key, parsed)
        await resp.send(200, Message.of(out).body, JSON)
