"""Helpers for tests that drive an in-process server with simulated nodes."""

from __future__ import annotations

from typing import Any

from meshscale.server import Server
from meshscale.simclient import MapStream, SimNode


async def join(server: Server, key: str, hostname: str, stream: bool = True,
               **hostinfo: Any) -> tuple[SimNode, MapStream | None, dict[str, Any] | None]:
    """Register a node with ``key`` (extra Hostinfo fields as keywords) and, unless
    ``stream`` is False, open its map stream and return the first (full) map."""
    node = SimNode(hostname)
    node.hostinfo.update(hostinfo)
    await node.conn.connect("127.0.0.1", server.main_port)
    resp = await node.register(key)
    assert resp.get("MachineAuthorized") is True, resp
    if not stream:
        return node, None, None
    s = node.open_stream()
    first = await s.next()
    assert first is not None and "Node" in first
    return node, s, first


async def next_with(stream: MapStream, field: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next delta carrying ``field``; a full map (a reconnect) or the end fails the test."""
    while True:
        msg = await stream.next(timeout)
        assert msg is not None, "stream ended"
        assert "Peers" not in msg, f"got a full map instead of a delta: {list(msg)}"
        if field in msg:
            return msg


async def quiet(stream: MapStream, wait: float = 0.3) -> list[dict[str, Any]]:
    """What arrives on ``stream`` until it is quiet for ``wait`` seconds."""
    got = []
    while True:
        try:
            msg = await stream.next(timeout=wait)
        except TimeoutError:
            return got
        assert msg is not None
        got.append(msg)
