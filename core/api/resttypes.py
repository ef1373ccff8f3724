"""What the /api/v1 operations (meshscale.api.restops) get and may raise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from meshscale.errors import MeshscaleError

if TYPE_CHECKING:
    from meshscale.api.admin import AdminServer
    from meshscale.control.plane import ControlPlane

    class RestServer(AdminServer, Protocol):
        """The admin API's view of the server, and the control plane (interactive logins)."""

        @property
        def plane(self) -> ControlPlane | None: ...
else:
    RestServer = Any


class Unimplemented(MeshscaleError):
    """An operation of headscale's API that meshscale does not offer."""


@dataclass(frozen=True)
class Call:
    """What an operation gets: path parameters, query parameters, the JSON body."""

    server: RestServer
    path: Mapping[str, str]
    query: Mapping[str, str]
    body: Mapping[str, Any]
