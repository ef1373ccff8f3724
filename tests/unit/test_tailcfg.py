"""The capability-version floor: one check and one wording for register and map."""

from __future__ import annotations

from meshscale import tailcfg


def test_too_old_below_the_floor_only() -> None:
    assert tailcfg.CAPVER_MIN == 113  # Tailscale v1.80
    assert tailcfg.too_old(113) is None and tailcfg.too_old(130) is None
    assert tailcfg.too_old(112) == (
        "this Tailscale client is too old (capability version 112); meshscale needs "
        "Tailscale v1.80 or newer (capability version 113)")
