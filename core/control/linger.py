"""Closing a connection so that the client reads our last bytes: FIN, then discard its input.

Closing a socket whose receive buffer holds unread bytes makes the kernel send RST, and a RST
makes the client's kernel discard what the client had not read yet: our GOAWAY (a client
flooding resets has its next frames in flight when we close), or the front door's last plain
refusal. So close lingers: our side is shut down for writing (FIN after the last bytes) and input
is read and discarded until the client closes too, LINGER seconds pass, or LINGER_BYTES were
discarded; then the socket closes. Used by the HTTP/2 connection (``h2conn.py``) and the front
door (``transport.py``).
"""

from __future__ import annotations

import asyncio
import contextlib

LINGER = 2.0
LINGER_BYTES = 1 << 20
READ_CHUNK = 65536


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """FIN after what we wrote, then discard input (bounded) so that closing sends no RST that
    would destroy our last bytes in the client's buffer before it read them (see LINGER)."""
    if writer.transport.is_closing() or not writer.can_write_eof():
        return
    writer.write_eof()
    discarded = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(LINGER):
            while discarded < LINGER_BYTES:
                data = await reader.read(READ_CHUNK)
                if not data:
                    return
                discarded += len(data)
