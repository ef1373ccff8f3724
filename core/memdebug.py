"""Where the server's memory is: a debugging switch, off unless ``MESHSCALE_MEMDEBUG`` is set.

``MESHSCALE_MEMDEBUG=DIR`` makes ``meshscale serve`` write a report into DIR on SIGUSR1 and
whenever its RSS reaches a new peak (checked every ``MESHSCALE_MEMDEBUG_EVERY`` seconds,
default 2, by a thread of its own: a peak inside one long turn of the event loop, which a loop
timer would miss, is seen too; a peak must be 5 % above the last one reported). A report made
by that thread includes the event loop thread's stack: what the server was doing at the peak.
``MESHSCALE_MEMDEBUG_FRAMES=N`` also starts tracemalloc with N frames per traceback (slows
the server two to three times) and adds the top allocations by traceback to each report.

A report: VmRSS/VmHWM (/proc/self/status), /proc/self/smaps_rollup, glibc's ``mallinfo2``
(heap in arenas, mmapped blocks, in use, free), and what the asyncio transports hold in their
write buffers (bytes waiting and bytes allocated), found through the garbage collector. See
docs/performance.md (restrictive policy at 10,000 nodes).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
import tracemalloc
from pathlib import Path

from meshscale.alloc import mallinfo

log = logging.getLogger(__name__)

ENV_DIR = "MESHSCALE_MEMDEBUG"


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM and RssAnon of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def transports() -> dict[str, int]:
    """Bytes the asyncio socket transports hold unsent, and what their buffers allocate."""
    from meshscale.mapper.session import MapSession  # noqa: PLC0415

    count = waiting = allocated = sessions = queued = needs_full = 0
    for obj in gc.get_objects():
        # What waits is public (get_write_buffer_size); what the buffer allocates is not: a
        # socket transport's bytearray keeps its capacity after a burst, which is what this
        # report looks for, so the private ``_buffer`` is read, and only where it exists (the
        # socket transports, also those under a TLS transport).
        if isinstance(obj, asyncio.Transport) and hasattr(obj, "_buffer"):
            count += 1
            waiting += obj.get_write_buffer_size()
            allocated += sys.getsizeof(obj._buffer)
        elif isinstance(obj, MapSession):
            sessions += 1
            queued += len(obj.queue)
            needs_full += obj.needs_full
    return {"transports": count, "write_buffers_waiting": waiting,
            "write_buffers_allocated": allocated, "map_sessions": sessions,
            "messages_queued": queued, "sessions_waiting_for_full_map": needs_full}


def report(frames: int, loop_thread: int | None = None) -> str:
    lines = [f"time {time.time():.1f}"]
    frame = sys._current_frames().get(loop_thread) if loop_thread is not None else None
    if frame is not None and loop_thread != threading.get_ident():
        lines.append("event loop thread's stack:")
        lines += [f"   {line.rstrip()}" for line in traceback.format_stack(frame)[-12:]]
    lines += [f"{k} {v / 2**20:.1f} MB" for k, v in proc_status().items()]
    lines += [f"malloc {k} {v / 2**20:.1f} MB" for k, v in mallinfo().items()]
    rollup = Path("/proc/self/smaps_rollup")
    if rollup.exists():
        lines += ["smaps_rollup:", rollup.read_text()]
    lines += [f"{k} {v}" for k, v in transports().items()]
    if frames and tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("traceback")
        total = sum(s.size for s in stats)
        lines.append(f"tracemalloc total {total / 2**20:.1f} MB in {len(stats)} tracebacks")
        for s in stats[:25]:
            lines.append(f"-- {s.size / 2**20:.1f} MB in {s.count} blocks")
            lines += [f"   {line}" for line in s.traceback.format()[-2 * frames:]]
    return "\n".join(lines) + "\n"


class MemDebug:
    """Reports into ``directory`` on SIGUSR1 and at each new RSS peak (seen by a thread)."""

    def __init__(self, directory: Path, every: float, frames: int) -> None:
        self.directory = directory
        self.every = every
        self.frames = frames
        self.peak = 0
        self.count = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="memdebug", daemon=True)

    def dump(self, why: str) -> None:
        with self._lock:
            self.count += 1
            path = self.directory / f"mem-{self.count:03d}-{why}.txt"
            try:
                path.write_text(report(self.frames, self._loop_thread))
            except OSError as exc:
                log.warning("memory report not written to %s: %s", path, exc)

    def _watch(self) -> None:
        while not self._stopped.wait(self.every):
            rss = proc_status().get("VmRSS", 0)
            if rss > self.peak * 1.05:
                self.peak = rss
                self.dump(f"peak-{rss >> 20}MB")

    def stop(self) -> None:
        self._stopped.set()


def install_from_env() -> MemDebug | None:
    """Start reporting if ``MESHSCALE_MEMDEBUG`` names a directory (inside the running loop)."""
    value = os.environ.get(ENV_DIR)
    if not value:
        return None
    directory = Path(value)
    directory.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get("MESHSCALE_MEMDEBUG_FRAMES", "0"))
    if frames:
        tracemalloc.start(frames)
    dbg = MemDebug(directory, float(os.environ.get("MESHSCALE_MEMDEBUG_EVERY", "2")), frames)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dbg.dump, "signal")
    dbg._thread.start()
    log.warning("memory reports go to %s (%s)", directory, ENV_DIR)
    return dbg
