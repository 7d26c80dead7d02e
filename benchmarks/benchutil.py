"""Helpers shared by the benchmark suites (imported by them; not a test module).

The cases themselves (reference models, their PyTorch twins, GEMM shapes, digits) come from
`layerprop.bench`, so these suites and `layerprop bench` time the same code."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from layerprop import bench

THREADS = [1, 2]


@contextlib.contextmanager
def at_threads(n):
    """`n` threads for layerprop, PyTorch and NumPy's BLAS inside the block (skips the test
    when the machine has fewer cores), after letting other thread pools go idle."""
    if n > (os.cpu_count() or 1):
        pytest.skip(f"{n} threads on a machine with {os.cpu_count()} CPUs")
    with bench.threads(n):
        bench.settle()
        yield


def run(benchmark, fn, big=False):
    """Benchmark `fn` and return its result. Big cases (a second or so per call) get a fixed,
    small number of rounds; under --benchmark-disable every case runs once."""
    if big:
        return benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
    return benchmark(fn)


def rel_err(a, b):
    """max|a - b| / max|b|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))
