"""Values plugins hand to core through hooks: frozen, small, typed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from meshscale.errors import ConfigError

if TYPE_CHECKING:
    from meshscale.config import Config
    from meshscale.policy import PolicyEngine
    from meshscale.storage.base import Storage


@dataclass(frozen=True, slots=True)
class ConfigSection:
    """A top-level config section a plugin owns.

    ``parse`` receives the raw mapping (``{}`` when the section is absent) and the dotted path
    for error messages; it returns the plugin's typed settings or raises ConfigError.
    """

    name: str
    parse: Callable[[Mapping[str, Any], str], object]


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


def pick(offered: Sequence[N], wanted: str, key: str, what: str) -> N:
    """The one of ``offered`` (from a registry hook) called ``wanted``, as config ``key`` asks.

    The one home of "pick a backend by name": a name nobody offers is a ConfigError at ``key``
    listing what the loaded plugins do offer.
    """
    for item in offered:
        if item.name == wanted:
            return item
    names = ", ".join(sorted(i.name for i in offered)) or "none (is its plugin in plugins:?)"
    raise ConfigError(key, f"unknown {what} {wanted!r}; available: {names}")


@dataclass(frozen=True, slots=True)
class StorageBackend:
    """A named storage backend (``database.type``); ``open`` builds it from the config."""

    name: str
    open: Callable[[Config], Storage]
    # The stored policy read without opening the storage (no migration, no lock), for
    # ``configtest``; None when it cannot be read. Optional: without it nothing is checked.
    stored_policy: Callable[[Config], str | None] | None = None


@dataclass(frozen=True, slots=True)
class PolicyEngineSpec:
    """A named policy engine (``policy.engine``)."""

    name: str
    create: Callable[[Config], PolicyEngine]


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """An HTTP/1.1 request that asked to switch protocols, handed over with its socket.

    The handler owns the connection from here: it writes its own ``101`` (or an error response)
    and closes the writer when done. ``reader`` starts right after the request head.
    """

    method: str
    target: str  # path with query, e.g. "/derp"
    headers: Sequence[tuple[str, str]]  # names lower-cased
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: tuple[str, int]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


UpgradeHandler = Callable[[UpgradeRequest], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class UpgradeRoute:
    """Take over connections to ``path`` whose ``Upgrade`` header is one of ``protocols``."""

    path: str
    protocols: frozenset[str]  # lower-case, e.g. {"derp", "websocket"}
    handler: UpgradeHandler


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """A plain HTTP route on the main listener, served by the Quart app.

    ``view`` is an async Quart view function; it reads ``quart.request`` as usual.
    """

    path: str
    view: Callable[..., Awaitable[Any]]
    methods: tuple[str, ...] = ("GET",)
    name: str = field(default="")
