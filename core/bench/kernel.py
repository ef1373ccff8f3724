"""The machine's side of a measured run: kernel counters and this process's CPU split.

A run's figures can be off for reasons outside meshscale (the kernel reclaiming or compacting
memory, TCP memory under pressure, another process's sockets still closing). ``snapshot()``
reads what would show it (Linux's /proc; elsewhere empty), ``delta()`` reports the change over
the measured part, so each run's JSON carries the evidence beside the figure.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

from meshscale.alloc import mallinfo
from meshscale.bench.serverproc import rss_bytes

# Counters of /proc/vmstat worth a look when a run is slower than its siblings.
VMSTAT = ("pgfault", "pgmajfault", "pgalloc_normal", "pgfree", "compact_stall",
          "compact_migrate_scanned", "compact_free_scanned", "compact_isolated",
          "compact_daemon_wake", "allocstall_normal", "allocstall_movable", "pgscan_direct",
          "pgscan_kswapd", "thp_fault_alloc", "thp_fault_fallback",
          "thp_collapse_alloc", "thp_split_page", "nr_free_pages")


def _vmstat() -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name in VMSTAT:
                out[name] = int(value)
    return out


def _sockstat() -> dict[str, int]:
    """TCP sockets in use, orphaned, in TIME_WAIT, allocated, and TCP memory in pages."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                words = line.split()[1:]
                out = {f"tcp_{k}": int(v) for k, v in zip(words[::2], words[1::2], strict=False)}
    return out


# TcpExt counters (/proc/net/netstat) that move when TCP's memory is short: the kernel pruning
# and collapsing receive queues (copies), dropping segments a full queue cannot take (the sender
# retransmits them), and the times it entered memory pressure (tcp_mem's second value).
TCPEXT = ("TCPMemoryPressures", "TCPMemoryPressuresChrono", "PruneCalled", "RcvPruned",
          "TCPRcvCollapsed", "TCPRcvQDrop", "TCPOFOQueue", "TCPOFODrop", "OfoPruned",
          "TCPBacklogDrop", "TCPAbortOnMemory")


def _netstat() -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for path in ("/proc/net/netstat", "/proc/net/snmp"):
            lines = Path(path).read_text().splitlines()
            for head, values in zip(lines[::2], lines[1::2], strict=False):
                names, numbers = head.split()[1:], values.split()[1:]
                kind = head.split(":")[0]
                for name, value in zip(names, numbers, strict=False):
                    if (kind == "TcpExt" and name in TCPEXT) or (
                            kind == "Tcp" and name == "RetransSegs"):
                        out[name] = int(value)
    return out


def tcp_mem_limits() -> tuple[int, ...]:
    """tcp_mem: pages of TCP memory below which no pressure, above which pressure, hard cap."""
    with contextlib.suppress(OSError, ValueError):
        return tuple(int(v) for v in Path("/proc/sys/net/ipv4/tcp_mem").read_text().split())
    return ()


class TcpMemWatch:
    """Samples TCP's memory (pages, /proc/net/sockstat) from a thread while a run measures:
    the peak and a coarse series, to see when a run went into memory pressure."""

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.samples: list[tuple[float, int, float, float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu0 = (0.0, 0.0)

    def start(self) -> None:
        self._t0 = time.monotonic()
        own = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu0 = (own.ru_utime, own.ru_stime)
        self._thread = threading.Thread(target=self._run, name="tcp-mem-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            own = resource.getrusage(resource.RUSAGE_SELF)
            self.samples.append((time.monotonic() - self._t0, _sockstat().get("tcp_mem", 0),
                                 own.ru_utime, own.ru_stime, _rss_mb()))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = max((s[1] for s in self.samples), default=0)
        limits = tcp_mem_limits()
        over = sum(1 for s in self.samples if limits and s[1] > limits[1]) * self.every
        # One value a second: TCP memory (the highest of its samples, MB) and this process's
        # user and system CPU in that second.
        mem: dict[int, int] = {}
        cpu: dict[int, tuple[float, float]] = {}
        rss: dict[int, int] = {}
        for t, m, user, sys_, r in self.samples:
            mem[int(t)] = max(mem.get(int(t), 0), m)
            cpu[int(t)] = (user, sys_)
            rss[int(t)] = max(rss.get(int(t), 0), r)
        page = os.sysconf("SC_PAGE_SIZE")
        secs = sorted(cpu)
        prev = [self._cpu0] + [cpu[k] for k in secs[:-1]] if secs else []
        return {"tcp_mem_peak_mb": peak * page >> 20,
                "tcp_mem_limits_mb": [v * page >> 20 for v in limits],
                "tcp_mem_over_pressure_s": round(over, 2),
                "tcp_mem_mb_each_s": [mem[k] * page >> 20 for k in secs],
                "generator_rss_mb_each_s": [rss[k] for k in secs],
                "generator_malloc_mb": {k: v >> 20 for k, v in mallinfo().items()},
                "generator_user_sys_each_s": [
                    (round(cpu[k][0] - p[0], 2), round(cpu[k][1] - p[1], 2))
                    for k, p in zip(secs, prev, strict=True)]}


def _rss_mb() -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return rss_bytes(os.getpid()) >> 20
    return 0


def _steal() -> int:
    """The machine's stolen CPU ticks (a hypervisor running someone else)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])
    return 0


def snapshot() -> dict[str, Any]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {"vm": _vmstat(), "tcp": _sockstat(), "net": _netstat(), "steal": _steal(), "load": load,
            "user": own.ru_utime, "sys": own.ru_stime, "minflt": own.ru_minflt,
            "majflt": own.ru_majflt, "nvcsw": own.ru_nvcsw, "nivcsw": own.ru_nivcsw}


def delta(before: dict[str, Any]) -> dict[str, Any]:
    """The generator's own user/sys CPU, faults and context switches over the measured part,
    the machine's vmstat counters' changes, and TCP's socket state at both ends."""
    now = snapshot()
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    vm = {k: now["vm"][k] - before["vm"].get(k, 0) for k in now["vm"] if k != "nr_free_pages"}
    vm["free_mb_before"] = before["vm"].get("nr_free_pages", 0) * page >> 20
    vm["free_mb_after"] = now["vm"].get("nr_free_pages", 0) * page >> 20
    return {
        "generator_user_s": round(now["user"] - before["user"], 3),
        "generator_sys_s": round(now["sys"] - before["sys"], 3),
        "generator_minflt": now["minflt"] - before["minflt"],
        # The kernel counts the peak in KB on Linux.
        "generator_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "generator_majflt": now["majflt"] - before["majflt"],
        "generator_vol_switches": now["nvcsw"] - before["nvcsw"],
        "generator_invol_switches": now["nivcsw"] - before["nivcsw"],
        "machine_steal_s": round((now["steal"] - before["steal"]) / tick, 2),
        "load_before": before["load"],
        "vmstat": vm,
        "tcpext": {k: now["net"][k] - before["net"].get(k, 0) for k in now["net"]},
        "tcp_before": before["tcp"],
        "tcp_after": now["tcp"],
    }
