"""The load of the rest of the machine during a run, from /proc/stat (Linux)."""
from __future__ import annotations

import os
import time
from typing import Optional, Tuple


def _cpu_snapshot() -> Optional[Tuple[float, float, float]]:
    """(wall seconds, busy CPU-seconds of the whole machine from /proc/stat, CPU-seconds of
    this process), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    busy = sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)   # all but idle and iowait
    t = os.times()
    return time.perf_counter(), busy / hz, t.user + t.system


def _other_load(before, after) -> Optional[float]:
    """CPUs used on average by other processes (and the hypervisor) between two snapshots."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0]))
