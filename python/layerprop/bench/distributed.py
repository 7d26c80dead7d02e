"""Data-parallel training: measured here, and projected to clusters (docs/distributed.md).

    python benchmarks/distributed.py                # everything: launches mpiexec -n 2 itself
    python benchmarks/distributed.py --markdown     # the tables of docs/distributed.md
    layerprop bench --ranks 2                       # adds the 2-rank line to layerprop bench

1. Ranks or threads: a training step of the M (784-512-512-10, batch 256, Adam) and L
   (1024-2048-2048-1024, batch 512, mse, Adam) models as 2 ranks x 1 thread (each rank half of
   the batch, gradients all-reduced) against 1 process x 2 threads and 1 x 1, on this machine.
2. The all-reduce: MPI_Allreduce of P float32 values between the 2 ranks, for P = 2^10 ... 2^24,
   summed up as the latency (the smallest message's time) and the bandwidth (the largest's).
3. Compute per row: the step time of M and L at 1 thread for several batch sizes, fitted to
   t = c0 + c1 * rows.
4. The model: one step of N ranks, each with b rows, takes c0 + c1 b + T_ar(P, N), with the
   ring all-reduce T_ar = 2 (N - 1) (alpha + 4 P / (N * link bandwidth)); efficiency
   (c0 + c1 b) / step. The table gives it at 2, 8, 64 and 256 ranks on 10, 25 and 100 Gb/s
   links (alpha = 5 us per message), and the rows per rank each needs for 80% efficiency.

Without mpi4py or an MPI launcher, parts 1-2 are skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

MODELS = {"M": ([784, 512, 512, 10], 256, "cross_entropy"), "L": ([1024, 2048, 2048, 1024], 512, "mse")}
LINKS_GBPS = (10, 25, 100)
RANKS = (2, 8, 64, 256)
ALPHA_S = 5e-6


def _model(key: str, seed: int = 0):
    import layerprop as lp
    sizes, _, loss = MODELS[key]
    layers: List = []
    for i in range(len(sizes) - 1):
        layers.append(lp.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(lp.ReLU())
    m = lp.Sequential(*layers, seed=seed)
    return m, loss


def _batch(key: str, rows: int, seed: int = 0):
    sizes, _, loss = MODELS[key]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, sizes[0])).astype(np.float32)
    y = (rng.integers(0, sizes[-1], rows) if loss == "cross_entropy"
         else rng.standard_normal((rows, sizes[-1])).astype(np.float32))
    return X, y


def _time_collective(ctx, step, seconds: float) -> float:
    """Median seconds per call of a collective `step`: every rank makes the same number of
    calls (agreed from a first timing), and the slowest rank's median is the job's."""
    from mpi4py import MPI
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    step()
    first = ctx.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    reps = int(max(5, min(2000, seconds / max(first, 1e-9))))
    ts: List[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return float(ctx.comm.allreduce(statistics.median(ts), op=MPI.MAX))


def _time_steps(step, seconds: float, min_reps: int = 5) -> float:
    for _ in range(2):
        step()
    ts: List[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ts) < min_reps:
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def num_params(key: str) -> int:
    sizes = MODELS[key][0]
    return sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))


# ------------------------------------------------------------------ under mpiexec
def rank_main(seconds: float) -> None:
    import layerprop as lp
    from mpi4py import MPI
    ctx = lp.distributed.init(threads=1)
    out: Dict[str, Any] = {"size": ctx.size, "steps": {}, "allreduce": {}}
    for key in MODELS:
        m, loss = _model(key)
        m.compile(loss=loss, optimizer=lp.Adam(lr=1e-4), distributed=True)
        B = MODELS[key][1]
        X, y = _batch(key, B)
        mine = lp.distributed.share(ctx, np.arange(B))
        Xr, yr = X[mine], y[mine]
        ctx.comm.Barrier()
        out["steps"][key] = _time_collective(ctx, lambda: m.train_step(Xr, yr), seconds)
    for e in range(10, 25, 2):
        a = np.ones(1 << e, np.float32)
        ctx.comm.Barrier()
        out["allreduce"][str(1 << e)] = _time_collective(
            ctx, lambda: ctx.comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM), min(seconds, 0.3))
    if ctx.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def launch(n: int, seconds: float) -> Optional[dict]:
    try:
        import mpi4py  # noqa: F401  (is it installed?)
    except ImportError:
        print("(skipped: no mpi4py; pip install 'layerprop[mpi]')")
        return None
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if not exe:
        print("(skipped: no mpiexec on PATH)")
        return None
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([exe, "-n", str(n), sys.executable, "-m", "layerprop.bench.distributed", "--rank-main",
                        "--seconds", str(seconds)], capture_output=True, text=True, env=env, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"mpiexec failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(lines[0][7:])


# ------------------------------------------------------------------ one process
def single(seconds: float) -> dict:
    import layerprop as lp
    old = lp.get_num_threads()
    res: Dict[str, Dict] = {"steps": {}, "per_row": {}}
    try:
        for key in MODELS:
            B = MODELS[key][1]
            res["steps"][key] = {}
            for nt in (1, 2):
                lp.set_num_threads(nt)
                m, loss = _model(key)
                m.compile(loss=loss, optimizer=lp.Adam(lr=1e-4))
                X, y = _batch(key, B)
                res["steps"][key][nt] = _time_steps(lambda: m.train_step(X, y), seconds)
            lp.set_num_threads(1)
            rows = [16, 64, 128, 256, 512] if key == "M" else [32, 128, 256, 512]
            ts = []
            for b in rows:
                m, loss = _model(key)
                m.compile(loss=loss, optimizer=lp.Adam(lr=1e-4))
                X, y = _batch(key, b)
                ts.append(_time_steps(lambda: m.train_step(X, y), seconds / 2))
            c1, c0 = np.polyfit(rows, ts, 1)
            res["per_row"][key] = {"rows": rows, "seconds": ts, "c0": float(c0), "c1": float(c1)}
    finally:
        lp.set_num_threads(old)
    return res


def project(per_row: dict, alpha: float = ALPHA_S) -> List[dict]:
    rows_out = []
    for key in MODELS:
        c0, c1 = per_row[key]["c0"], per_row[key]["c1"]
        P = num_params(key)
        B = MODELS[key][1]
        for n in RANKS:
            for gbps in LINKS_GBPS:
                bw = gbps * 1e9 / 8
                t_ar = 2 * (n - 1) * (alpha + 4 * P / (n * bw))
                b = max(1, B // n)  # the global batch split over n ranks (strong scaling)
                comp = c0 + c1 * b
                eff = comp / (comp + t_ar)
                # rows per rank for 80%: c0 + c1 b >= 4 T_ar
                need = max(1, int(np.ceil((4 * t_ar - c0) / c1))) if 4 * t_ar > c0 else 1
                rows_out.append({"model": key, "ranks": n, "gbps": gbps, "allreduce_ms": t_ar * 1e3,
                                 "rows_per_rank": b, "efficiency": eff, "rows_for_80": need,
                                 "global_batch_for_80": need * n})
    return rows_out


def two_rank_line(seconds: float = 0.5) -> Optional[str]:
    """The line `layerprop bench --ranks 2` prints: M and L steps at 2 ranks x 1 thread."""
    two = launch(2, seconds)
    if not two:
        return None
    return ("2 ranks x 1 thread (mpiexec -n 2, each rank half of the batch, gradients all-reduced): "
            + ", ".join(f"{k} {two['steps'][k] * 1e3:.2f} ms/step" for k in MODELS))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rank_main:
        rank_main(a.seconds)
        return 0
    one = single(a.seconds)
    two = launch(2, a.seconds)
    print("Step time (median), this machine:")
    for key in MODELS:
        s1, s2 = one["steps"][key][1], one["steps"][key][2]
        line = f"  {key}: 1 process x 1 thread {s1 * 1e3:.2f} ms, 1 x 2 threads {s2 * 1e3:.2f} ms"
        if two:
            line += f", 2 ranks x 1 thread {two['steps'][key] * 1e3:.2f} ms"
        print(line)
    if two:
        sizes = np.array([int(k) for k in two["allreduce"]], dtype=np.float64) * 4
        times = np.array(list(two["allreduce"].values()))
        lat, bw = float(times[0]), float(sizes[-1] / times[-1])
        print(f"All-reduce between 2 ranks here: {lat * 1e6:.1f} us for {int(sizes[0])} B, "
              f"{bw / 1e9:.2f} GB/s at {int(sizes[-1]) >> 20} MiB")
        for key in MODELS:
            P = num_params(key)
            print(f"  {key}: {P:,} parameters, all-reduce {(lat + 4 * P / bw) * 1e3:.2f} ms")
    for key in MODELS:
        r = one["per_row"][key]
        print(f"Compute, 1 thread, {key}: {r['c0'] * 1e3:.3f} ms + {r['c1'] * 1e6:.2f} us per row")
    proj = project(one["per_row"])
    if a.markdown:
        if two:
            print("\n| model | 1 process x 1 thread | 1 process x 2 threads | 2 ranks x 1 thread |")
            print("|---|---|---|---|")
            for key in MODELS:
                print(f"| {key} | {one['steps'][key][1] * 1e3:.2f} ms | {one['steps'][key][2] * 1e3:.2f} ms | "
                      f"{two['steps'][key] * 1e3:.2f} ms |")
        print("\n| model | ranks | link | all-reduce | rows per rank | efficiency | rows per rank for 80% | global batch for 80% |")
        print("|---|---|---|---|---|---|---|---|")
        for r in proj:
            print(f"| {r['model']} | {r['ranks']} | {r['gbps']} Gb/s | {r['allreduce_ms']:.2f} ms | {r['rows_per_rank']} | "
                  f"{r['efficiency'] * 100:.0f}% | {r['rows_for_80']:,} | {r['global_batch_for_80']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
