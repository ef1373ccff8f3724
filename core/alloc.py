"""Giving freed memory back to the system after a burst (glibc only; elsewhere nothing).

A storm or a fan-out at 10,000 streams frees hundreds of MB of short-lived buffers (frames,
sealed records, socket write buffers) that lay between long-lived objects in glibc's heap:
glibc only shrinks the heap from its top, so that memory stayed in the RSS as free heap
(measured: 470 MB of 777 MB after a 10,000-node restrictive storm, docs/performance.md).
``malloc_trim(0)`` returns the free pages inside the heap too. It walks the heap's free
chunks (milliseconds), so it runs only when mallinfo2 says enough is free.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from typing import Any

log = logging.getLogger(__name__)

TRIM_EVERY = 30.0  # seconds between looks
TRIM_OVER = 64 << 20  # free heap bytes worth a trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS) or glibc before 2.33
    return libc


def mallinfo() -> dict[str, int]:
    """glibc's view of its heap in bytes (empty where the C library is not glibc 2.33+)."""
    libc = _libc()
    if libc is None:
        return {}
    info = libc.mallinfo2()
    return {"arena_heap": info.arena, "mmapped": info.hblkhd, "in_use": info.uordblks,
            "free_in_heap": info.fordblks, "releasable_top": info.keepcost}


def trim(over: int = TRIM_OVER) -> int:
    """``malloc_trim(0)`` if more than ``over`` bytes of the heap are free: bytes free before
    (0 if nothing was done)."""
    libc = _libc()
    if libc is None:
        return 0
    free = int(libc.mallinfo2().fordblks)
    if free <= over:
        return 0
    libc.malloc_trim(0)
    return free


async def trim_periodically(every: float = TRIM_EVERY) -> None:
    """The server's background task: look every ``every`` seconds, trim when worth it."""
    if _libc() is None:
        return
    while True:
        await asyncio.sleep(every)
        free = trim()
        if free:
            log.debug("returned free heap to the system (%d MB were free)", free >> 20)
