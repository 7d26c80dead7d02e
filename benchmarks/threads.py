"""Threads next to other work: layerprop's training step at 1 and 2 threads, in three settings.

    python benchmarks/threads.py                 # D, S and M in every setting, with PyTorch
    python benchmarks/threads.py --models S M --settings quiet interleaved --no-torch

Models (step = one `train_step` call from Python, as a user's loop makes it):
  D  64-128-10,       batch 32,  SGD
  S  784-128-10,      batch 32,  SGD
  M  784-512-512-10,  batch 256, Adam
Settings:
  quiet        nothing else runs
  busy         another process spins on one core for the whole measurement
  interleaved  a 256x256 NumPy matmul (BLAS's own threads) and a PyTorch call between steps

Every cell is the median over rounds that alternate the thread counts, so drift hits both.
The last column is the 2-thread speed-up: above 1 is faster with 2 threads. PyTorch eager
(its default thread pool, set per round with torch.set_num_threads) runs the same models in the
same process for comparison. No timing is asserted anywhere; this prints measurements.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Callable, Dict, List, Optional

import numpy as np

import layerprop as lp

MODELS = {
    "D": ([64, 128, 10], 32, "sgd"),
    "S": ([784, 128, 10], 32, "sgd"),
    "M": ([784, 512, 512, 10], 256, "adam"),
}


def _spin(stop, parent: int) -> None:  # the "busy" neighbour: one core, all the time
    import os
    x = 0
    while not stop.is_set() and os.getppid() == parent:  # never outlives the benchmark
        for _ in range(10000):
            x += 1


def _lp_stepper(key: str) -> Callable[[], None]:
    sizes, batch, opt = MODELS[key]
    layers: List = []
    for i in range(len(sizes) - 1):
        layers.append(lp.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(lp.ReLU())
    m = lp.Sequential(*layers, seed=0)
    m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3) if opt == "adam" else lp.SGD(lr=0.01))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    return lambda: m.train_step(X, y)


def _torch_stepper(key: str) -> Optional[Callable[[], None]]:
    try:
        import torch
    except ImportError:
        return None
    sizes, batch, opt = MODELS[key]
    torch.manual_seed(0)
    mods: List = []
    for i in range(len(sizes) - 1):
        mods.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    o = torch.optim.Adam(net.parameters(), lr=1e-3) if opt == "adam" else torch.optim.SGD(net.parameters(), lr=0.01)
    X = torch.randn(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))
    lossf = torch.nn.CrossEntropyLoss()

    def step() -> None:
        o.zero_grad(set_to_none=True)
        loss = lossf(net(X), y)
        loss.backward()
        o.step()

    return step


def _set_threads(lib: str, n: int) -> None:
    if lib == "layerprop":
        lp.set_num_threads(n)
    else:
        import torch
        torch.set_num_threads(n)


def _time(step: Callable[[], None], between: Optional[Callable[[], None]], budget_s: float) -> float:
    for _ in range(3):
        step()
        if between:
            between()
    times = []
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if between:
            between()
    return statistics.median(times)


def _interleave() -> Callable[[], None]:
    a = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    try:
        import torch
        t = torch.randn(256, 256)
    except ImportError:
        t = None

    def between() -> None:
        a @ a
        if t is not None:
            t @ t

    return between


def run(models: List[str], settings: List[str], libs: List[str], rounds: int, budget_s: float) -> List[Dict]:
    rows = []
    old_lp = lp.get_num_threads()
    for setting in settings:
        stop = proc = None
        if setting == "busy":
            ctx = mp.get_context("spawn")
            stop = ctx.Event()
            import os
            proc = ctx.Process(target=_spin, args=(stop, os.getpid()), daemon=True)
            proc.start()
            time.sleep(0.3)
        between = _interleave() if setting == "interleaved" else None
        try:
            for key in models:
                for lib in libs:
                    step = _lp_stepper(key) if lib == "layerprop" else _torch_stepper(key)
                    if step is None:
                        continue
                    t: Dict[int, List[float]] = {1: [], 2: []}
                    for _ in range(rounds):
                        for n in (1, 2):
                            _set_threads(lib, n)
                            t[n].append(_time(step, between, budget_s))
                    t1, t2 = statistics.median(t[1]), statistics.median(t[2])
                    rows.append({"setting": setting, "model": key, "lib": lib, "t1": t1, "t2": t2})
                    print(f"{setting:12s} {key}  {lib:9s} 1 thread {t1 * 1e6:9.1f} us   2 threads {t2 * 1e6:9.1f} us"
                          f"   speed-up {t1 / t2:5.2f}x", flush=True)
        finally:
            if proc is not None:
                stop.set()
                proc.join(5)
            lp.set_num_threads(old_lp)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--settings", nargs="+", default=["quiet", "busy", "interleaved"],
                   choices=["quiet", "busy", "interleaved"])
    p.add_argument("--no-torch", action="store_true", help="layerprop only")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell (default 3)")
    p.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement (default 0.5)")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    a = p.parse_args(argv)
    libs = ["layerprop"] + ([] if a.no_torch else ["torch"])
    rows = run(a.models, a.settings, libs, a.rounds, a.seconds)
    if a.markdown:
        def fmt(s: float) -> str:
            return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"
        print("\n| setting | model | library | 1 thread | 2 threads | 2-thread speed-up |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['setting']} | {r['model']} | {r['lib']} | {fmt(r['t1'])} | {fmt(r['t2'])} | "
                  f"{r['t1'] / r['t2']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
