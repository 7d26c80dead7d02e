"""The timing harness: thread counts set together for every library, A/B interleaved
sampling, waiting for idle thread pools, and the GEMM peak."""
from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Sequence

import numpy as np

from .specs import _torch_or_none, gemm_operands


# --------------------------------------------------------------------------------------------
# Threads: ours, PyTorch's (OpenMP + MKL) and NumPy's BLAS, set together and restored.

@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with `n` threads in layerprop, PyTorch (if installed) and NumPy's BLAS
    (through threadpoolctl, if installed); the previous settings come back afterwards."""
    import layerprop as lp
    old_lp = lp.get_num_threads()
    torch = _torch_or_none()
    old_torch = torch.get_num_threads() if torch is not None else None
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(n, user_api="blas"))
        lp.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            lp.set_num_threads(old_lp)
            if torch is not None:
                torch.set_num_threads(old_torch)


# --------------------------------------------------------------------------------------------
# Timing.

def _time_inner(f: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        f()
    return (time.perf_counter() - t0) / inner


def _pids_cpu(pids: Sequence[int]) -> float:
    """CPU-seconds used so far by the processes `pids` (from /proc; 0 where unreadable)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, ValueError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK") if total else 0.0


def settle(quiet_s: float = 0.012, max_s: float = 0.5, pids: Sequence[int] = ()) -> float:
    """Sleep until this process's other threads are idle: until, over a `quiet_s` sleep, the
    process used less than 20% of one core. Returns the seconds waited. `pids`: other processes
    (a peer's child) whose CPU time counts too; it is accounted in scheduler ticks, so their
    window is at least 25 ms.

    Every thread pool in the process (our OpenMP runtime, PyTorch's OpenMP and MKL, NumPy's
    OpenBLAS) keeps its workers spinning for a while after a parallel call; OpenBLAS's spin for
    about 0.1 s. With as many threads as cores, a call made in that window shares a core with
    the spinner and loses scheduler ticks (we saw a 512^3 product go from 1.7 ms to 5.5 ms
    for 0.1 s after one NumPy product, at 2 threads on 2 cores). A program uses one of these
    libraries at a time, so before each sample the others are let go quiet. `quiet_s` spans
    several scheduler ticks because other threads' CPU time is only accounted at ticks."""
    t0 = time.perf_counter()
    if pids:
        quiet_s = max(quiet_s, 0.025)
    while True:
        c0, p0, w0 = time.process_time(), _pids_cpu(pids), time.perf_counter()
        time.sleep(quiet_s)
        busy = time.process_time() - c0 + _pids_cpu(pids) - p0
        now = time.perf_counter()
        if busy < 0.2 * (now - w0) or now - t0 >= max_s:
            return now - t0


@dataclass
class Timing:
    """Seconds per call: the samples and their median."""
    samples: List[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float((q3 - q1) / self.median)


def interleaved(fns: Sequence[Callable[[], object]], *, sample_s: float = 2e-3,
                min_samples: int = 5, max_samples: int = 200, budget_s: float = 1.0,
                warmup: int = 2, quiet: bool = True) -> List[Timing]:
    """Seconds per call of each of `fns`, measured A/B interleaved.

    After `warmup` calls each, every round takes one sample of each callable, rotating which
    goes first (AB, BA, ... for two); a sample is the mean of `inner` consecutive calls, with
    `inner` chosen per callable so that a sample lasts about `sample_s`. With `quiet` (for
    more than one thread), before each sample the other thread pools are let go quiet
    (`settle`); then, for calls under 10 ms, one untimed call wakes this callable's own pool
    and caches, so a sample sees the steady state of a training loop. Rounds go on until
    `min_samples` rounds and `budget_s` seconds, or `max_samples` rounds."""
    fns = list(fns)
    for f in fns:
        for _ in range(warmup):
            f()
    inner, one_call = [], []
    for f in fns:
        if quiet:
            settle()
        one, n = _time_inner(f, 1), 1
        while one * n < sample_s and n < 1 << 20:
            n *= 2
            one = _time_inner(f, n)
        inner.append(max(1, int(round(sample_s / max(one, 1e-9)))))
        one_call.append(one)
    samples: List[List[float]] = [[] for _ in fns]
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t_start = time.perf_counter()
        r = 0
        while r < max_samples and (r < min_samples or time.perf_counter() - t_start < budget_s):
            shift = r % len(fns)
            for i in list(range(shift, len(fns))) + list(range(shift)):
                if quiet:
                    settle()
                if one_call[i] < 10e-3:
                    fns[i]()
                samples[i].append(_time_inner(fns[i], inner[i]))
            r += 1
    finally:
        if gc_was:
            gc.enable()
    return [Timing(s) for s in samples]


def measure_peak(n_threads: int, reps: int = 5, size: int = 1024) -> float:
    """GFLOP/s: the best of `reps` runs of `_core._gemm` on a size^3 float32 product at
    `n_threads` threads (the "GEMM peak (measured)" that "% peak" refers to)."""
    from layerprop import _core
    a, b = gemm_operands(size, size, size, False, False, seed=1)
    with threads(n_threads):
        settle()
        _core._gemm(a, b, False, False)
        best = min(_time_inner(lambda: _core._gemm(a, b, False, False), 1) for _ in range(reps))
    return 2.0 * size ** 3 / best / 1e9
