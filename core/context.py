"""What a running server offers its plugins: a narrow, read-mostly view.

A plugin object is made with a ServerContext (``Plugin(server)``) and hooks that need it receive it
too; plugins never reach into core internals past this protocol, so core may change behind it.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

    from meshscale.auth import Logins
    from meshscale.config import Config
    from meshscale.tls import MainTls


class ServerContext(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def data_dir(self) -> Path: ...

    def tls(self) -> MainTls | None:
        """The main listener's TLS state (the certificate in force, ACME challenge tables), or
        None when it speaks plain HTTP. The acme plugin installs certificates through it."""

    def node_key_known(self, node_key: bytes) -> bool:
        """Is this raw 32-byte node key registered and not expired? (DERP admission)"""

    def derp_map(self) -> Mapping[str, Any]:
        """The DERPMap clients currently receive (wire spelling)."""

    def refresh_derp_map(self) -> None:
        """Ask core to rebuild the DERP map (a plugin's region changed)."""

    def stats(self) -> Mapping[str, float]:
        """Cheap gauges core offers (nodes_total, nodes_online, users_total, map_streams),
        merged with every plugin's ``meshscale_stats`` values."""

    @property
    def policy_text(self) -> str | None:
        """The policy in force as written (None: no policy; everyone may reach everyone)."""

    def nodes(self) -> Sequence[Mapping[str, Any]]:
        """Every node as ``GET /v1/nodes`` shows it: a fresh list of plain JSON values."""

    def map_sessions(self) -> Sequence[Mapping[str, Any]]:
        """Open map streams as ``GET /v1/debug/sessions`` shows them: plain JSON values."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a background task owned by the server: cancelled at shutdown, failures logged."""

    def logins(self) -> Logins:
        """Waiting interactive logins, for a login provider (meshscale_auth_providers) to
        complete or refuse."""

    def plugin(self, name: str) -> object | None:
        """The plugin object loaded under ``name`` in this server, or None if it is not loaded
        (how one plugin finds another, e.g. DERP asks STUN for its bound port)."""
