"""Every benchmark scenario by the name ``meshscale bench`` takes (soak lives in its own module
and builds on the shared fleet set-up of harness.py, so the list is here, above all of them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshscale.bench.churn import churn
from meshscale.bench.floor import floor
from meshscale.bench.policychange import policy
from meshscale.bench.scenarios import fanout, memory, register, storm
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
