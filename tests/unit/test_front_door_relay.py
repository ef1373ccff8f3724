"""The front door's relay to the app: the task that pumps a connection's bytes after its head
is held by that front door (not by the module) and ends when the connection does."""

from __future__ import annotations

import asyncio
import socket

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshscale.transport import FrontDoor
from tests.frontdoor_stubs import no_control, not_found_app
from tests.waiting import wait_until


async def test_a_relayed_connections_pump_is_its_front_doors_and_ends_with_it() -> None:
    key = X25519PrivateKey.generate()
    front, other = (FrontDoor(key, no_control, not_found_app) for _ in range(2))
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    c_reader, c_writer = await asyncio.open_connection(sock=b)
    serving = asyncio.create_task(front(reader, writer))
    try:
        c_writer.write(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await c_reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 404"), answer
        assert len(front.pumps) == 1 and not other.pumps
        c_writer.close()  # the client goes: the pump reads EOF and is let go
        await wait_until(lambda: not front.pumps, "the relay's pump to end")
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        c_writer.close()
