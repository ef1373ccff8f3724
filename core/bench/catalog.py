"""Every benchmark scenario by the name ``meshscale bench`` takes (soak lives in its own module
and builds on the shared fleet set-up of scenarios, so the list is here, above both)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshscale.bench.floor import floor
from meshscale.bench.scenarios import churn, fanout, memory, policy, register, storm
from meshscale.bench.shards import shards
from meshscale.bench.soak import soak

SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "register": register,
    "storm": storm,
    "fanout": fanout,
    "policy": policy,
    "churn": churn,
    "memory": memory,
    "soak": soak,
    "floor": floor,
    "shards": shards,
}
