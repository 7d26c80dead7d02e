"""Thread scaling of layerprop's training step, run alone.

`python benchmarks/scaling.py [M L ...]` times the reference models' steps (inside the core,
over `train_epoch`, so no Python per step) at 1 and 2 threads, alternating, and prints the
median step time per thread count and the 2-over-1 speed-up. No other library's thread pool is
loaded in this process: `layerprop bench` has PyTorch and NumPy's BLAS in the same process,
and a GEMM run right after one of their calls can stall while their workers spin, which makes
its 2-thread rows noisier than this.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import layerprop as lp
from layerprop import bench


def step_time(key: str, threads: int, batches: int, reps: int) -> float:
    spec = bench.MODELS[key]
    lp.set_num_threads(threads)
    model = bench.build_model(spec.sizes, spec.loss, spec.optimizer, seed=0)
    rng = np.random.default_rng(0)
    n = spec.batch * batches
    X = rng.standard_normal((n, spec.sizes[0])).astype(np.float32)
    if spec.loss == "cross_entropy":
        y = rng.integers(0, spec.sizes[-1], n).astype(np.int64)
    else:
        y = rng.standard_normal((n, spec.sizes[-1])).astype(np.float32)
    order = np.arange(n, dtype=np.int64)
    model._core.train_epoch(X, y, order, spec.batch)  # warm-up: workspace, pages, pools
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model._core.train_epoch(X, y, order, spec.batch)
        times.append((time.perf_counter() - t0) / batches)
    return float(np.median(times))


def main(argv: list) -> int:
    keys = argv or ["M", "L"]
    unknown = [k for k in keys if k not in bench.MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {sorted(bench.MODELS)}", file=sys.stderr)
        return 2
    old = lp.get_num_threads()
    try:
        for key in keys:
            batches, reps = (3, 3) if key == "L" else (20, 5)
            t = {1: [], 2: []}
            for _ in range(2):  # alternate, so drift hits both thread counts
                for nt in (1, 2):
                    t[nt].append(step_time(key, nt, batches, reps))
            t1, t2 = float(np.median(t[1])), float(np.median(t[2]))
            print(f"{bench.MODELS[key].name}: {t1 * 1e3:.2f} ms at 1 thread, {t2 * 1e3:.2f} ms at 2 threads, "
                  f"speed-up {t1 / t2:.2f}x")
    finally:
        lp.set_num_threads(old)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
