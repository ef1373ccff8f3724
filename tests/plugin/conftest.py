"""Fixtures shared by the in-process server tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshscale.server import Server


@pytest.fixture
def server_with(meshscale_server_factory: Callable[..., Any]) -> Callable[..., Any]:
    """A factory for a server on SQLite with the given ``limits:`` settings."""

    async def make(**limits: Any) -> Server:
        srv: Server = await meshscale_server_factory(plugins=["sqlite"], limits=limits)
        return srv

    return make
