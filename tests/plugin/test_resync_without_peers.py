"""A full map that resyncs a live stream down to no peers names the peers the client holds.

The Go client reads an empty ``Peers`` as "unchanged" (tailcfg.MapResponse: "Peers, if
non-empty, is the complete list of peers"), so without ``PeersRemoved`` an expired node kept
every peer it had (seen with tailscaled v1.102.5: tests/interop/test_tailscaled.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from meshscale.server import Server
from tests.plugin.simnodes import join

pytestmark = pytest.mark.asyncio


async def test_expired_nodes_resync_removes_the_peers_it_holds(
        meshscale_server_factory: Callable[..., Any]) -> None:
    server: Server = await meshscale_server_factory(plugins=["sqlite"])
    assert server.state is not None and server.lifecycle is not None
    user = server.state.create_user("alice")
    _, key = server.state.create_key(user, reusable=True)
    _, _, afirst = await join(server, key, "a")
    _, _, cfirst = await join(server, key, "c")
    _, sb, bfirst = await join(server, key, "b")
    assert sb is not None and afirst is not None and bfirst is not None and cfirst is not None
    assert sorted(p["ID"] for p in bfirst["Peers"]) == sorted(
        [afirst["Node"]["ID"], cfirst["Node"]["ID"]])
    assert "PeersRemoved" not in bfirst  # a new stream's first map has nothing to remove

    server.lifecycle.expire(bfirst["Node"]["ID"])
    while True:
        msg = await sb.next(timeout=5)
        assert msg is not None, "stream ended"
        if "DERPMap" in msg:  # the resync
            break
    assert msg["Node"]["Expired"] is True and "Peers" not in msg
    assert msg["PeersRemoved"] == sorted([afirst["Node"]["ID"], cfirst["Node"]["ID"]])
