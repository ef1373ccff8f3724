"""meshscale plugin: the Tailscale policy engine (HuJSON acls, grants, ssh, nodeAttrs, tests).

Registers the ``tailscale`` engine for ``policy.engine`` (entry point ``policy`` names
:class:`PolicyPlugin`). Importing this module does nothing else; the engine modules are imported
when an engine is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshscale import hookimpl
from meshscale.contributions import PolicyEngineSpec

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.context import ServerContext
    from meshscale.policy import PolicyEngine


def _create(config: Config) -> PolicyEngine:
    # Imported on use so that loading the plugin (or having it disabled) costs nothing.
    from meshscale.plugins.policy.engine import TailscalePolicyEngine  # noqa: PLC0415

    return TailscalePolicyEngine(control_url=str(config.server_url))


class PolicyPlugin:
    def __init__(self, server: ServerContext) -> None:
        self.server = server

    @hookimpl
    def meshscale_policy_engines(self) -> list[PolicyEngineSpec]:
        return [PolicyEngineSpec(name="tailscale", create=_create)]
