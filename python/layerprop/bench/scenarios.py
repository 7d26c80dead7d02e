"""`layerprop bench --scenarios`: layerprop's training step at 1 and 2 threads next to other work.

Models (a step is one `train_step` call from Python, as a user's loop makes it):

    D  64-128-10,            batch 32,  SGD,  cross-entropy
    S  784-128-10,           batch 32,  SGD,  cross-entropy
    M  784-512-512-10,       batch 256, Adam, cross-entropy
    L  1024-2048-2048-1024,  batch 512, Adam, MSE (float32 targets)

Settings:

    quiet        nothing else runs
    busy         another process spins on one core for the whole measurement
    interleaved  a 256x256 NumPy matmul (BLAS's own threads) and a 256x256 PyTorch matmul
                 (if PyTorch is installed) between steps

Every cell is the median over rounds that alternate the thread counts, so that drift hits both.
A round's figure is the median step time of one measurement: D, S and M take as many steps as
fit in a time budget, L (a step takes a sizeable fraction of a second) a fixed few. PyTorch eager
runs the same models in the same process for comparison, its thread count set per round with
`torch.set_num_threads`; only layerprop's rows are held to the targets (`TARGETS`), and nothing
is asserted: the table says, per cell, whether the target was met.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .specs import MODELS as REFERENCE_MODELS
from .specs import ModelSpec, _torch_or_none
from .table import _fmt_time

# --------------------------------------------------------------------------------------------
# What runs: the models, the settings and the targets.

SCENARIO_MODELS: Dict[str, ModelSpec] = {
    "D": ModelSpec("D b32", (64, 128, 10), "cross_entropy", "sgd", 32),
    "S": ModelSpec("S b32", (784, 128, 10), "cross_entropy", "sgd", 32),
    "M": ModelSpec("M b256", (784, 512, 512, 10), "cross_entropy", "adam", 256),
    "L": REFERENCE_MODELS["L"],
}
SETTINGS: Tuple[str, ...] = ("quiet", "busy", "interleaved")
LIBRARIES: Tuple[str, ...] = ("layerprop", "torch")

# Per setting: (kind, bound for every model, stricter bounds for some models).
#   "speed-up": the 2-thread speed-up t1 / t2 must be >= the bound;
#   "slowdown": the 2-thread time t2 must be <= bound * t1.
TARGETS: Dict[str, Tuple[str, float, Dict[str, float]]] = {
    "quiet": ("speed-up", 0.97, {"M": 1.85, "L": 1.85}),
    "busy": ("slowdown", 1.15, {}),
    "interleaved": ("speed-up", 1.0, {"M": 1.7, "L": 1.7}),
}


def target(setting: str, model: str) -> Tuple[str, float]:
    """The target of layerprop's cell (`setting`, `model`): ("speed-up", b) means t1 / t2 >= b,
    ("slowdown", b) means t2 <= b * t1."""
    kind, bound, stricter = TARGETS[setting]
    return kind, stricter.get(model, bound)


def meets_target(setting: str, model: str, t1: float, t2: float) -> bool:
    kind, bound = target(setting, model)
    return t1 / t2 >= bound if kind == "speed-up" else t2 <= bound * t1


def target_text(setting: str, model: str) -> str:
    kind, bound = target(setting, model)
    return f">= {bound:.2f}x" if kind == "speed-up" else f"t2 <= {bound:.2f} t1"


TARGET_LINES = (
    "quiet: 2-thread speed-up >= 0.97x on every model, >= 1.85x on M and L",
    "busy: 2-thread step time <= 1.15x the 1-thread step time on every model",
    "interleaved: 2-thread speed-up >= 1.0x on every model, >= 1.7x on M and L",
)


# --------------------------------------------------------------------------------------------
# How long each measurement is.

@dataclass(frozen=True)
class Budget:
    rounds: int             # A/B rounds per cell (1 thread, 2 threads, 1, 2, ...)
    seconds: float          # time budget of one measurement (D, S, M)
    min_steps: int          # timed steps of one measurement at least (D, S, M)
    warmup: int             # untimed steps before each measurement (D, S, M)
    fixed_steps: int        # timed steps of one measurement of L
    fixed_warmup: int       # untimed steps before each measurement of L


FULL = Budget(rounds=3, seconds=0.5, min_steps=5, warmup=3, fixed_steps=3, fixed_warmup=1)
QUICK = Budget(rounds=2, seconds=0.02, min_steps=3, warmup=1, fixed_steps=1, fixed_warmup=1)
FIXED_STEP_MODELS = ("L",)   # models timed for a fixed number of steps rather than a budget


# --------------------------------------------------------------------------------------------
# The busy neighbour.

def _spin(stop, ready, parent: int) -> None:
    """The "busy" neighbour: one core, all the time, until told to stop or its parent is gone."""
    ready.set()
    x = 0
    while not stop.is_set() and os.getppid() == parent:   # never outlives the benchmark
        for _ in range(10000):
            x += 1


class _Neighbour:
    """A spawned process spinning on one core; `stop()` ends and joins it."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        ready = ctx.Event()
        self.proc = ctx.Process(target=_spin, args=(self._stop, ready, os.getpid()), daemon=True,
                                name="layerprop-bench-spinner")
        self.proc.start()
        if not ready.wait(60):
            self.stop()
            raise RuntimeError("the busy neighbour process did not start within 60 s")
        time.sleep(0.05)   # let it reach its loop

    def stop(self) -> None:
        self._stop.set()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


# --------------------------------------------------------------------------------------------
# Steps.

def _stepper(key: str, lib: str) -> Optional[Callable[[], object]]:
    """One training step of model `key` in `lib`, or None if `lib` is not installed."""
    from .twins import batch, build_model, torch_twin
    spec = SCENARIO_MODELS[key]
    model = build_model(spec.sizes, spec.loss, spec.optimizer, seed=0)
    X, y = batch(spec)
    if lib == "layerprop":
        return lambda: model.train_step(X, y)
    net = torch_twin(model, spec.sizes)
    if net is None:
        return None
    import torch
    from .specs import OPTIMIZERS
    cls, kw = OPTIMIZERS[spec.optimizer]
    opt = getattr(torch.optim, cls)(net.parameters(), **kw)
    loss_fn = (torch.nn.functional.cross_entropy if spec.loss == "cross_entropy"
               else torch.nn.functional.mse_loss)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(Xt), yt).backward()
        opt.step()

    return step


def _interleave() -> Callable[[], None]:
    """What runs between steps in the "interleaved" setting."""
    a = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    torch = _torch_or_none()
    t = torch.from_numpy(a.copy()) if torch is not None else None

    def between() -> None:
        a @ a
        if t is not None:
            t @ t

    return between


def _measure(step: Callable[[], object], between: Optional[Callable[[], None]], *, warmup: int,
             min_steps: int, seconds: float) -> float:
    """Median time of one step: `warmup` untimed steps, then at least `min_steps` timed ones and
    as many more as fit in `seconds`; `between` (if given) runs after every step, untimed."""
    for _ in range(warmup):
        step()
        if between is not None:
            between()
    times: List[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_steps or time.perf_counter() < end:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if between is not None:
            between()
    return statistics.median(times)


def _set_threads(lib: str, n: int) -> None:
    if lib == "layerprop":
        import layerprop as lp
        lp.set_num_threads(n)
    else:
        import torch
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# The run and its table.

@dataclass
class ScenarioRow:
    setting: str
    model: str
    lib: str
    t1: float                 # median step time at 1 thread, seconds
    t2: float                 # median step time at 2 threads, seconds

    @property
    def speedup(self) -> float:
        return self.t1 / self.t2

    @property
    def target(self) -> Optional[str]:
        """The target as text, or None for PyTorch's rows (shown for comparison only)."""
        return target_text(self.setting, self.model) if self.lib == "layerprop" else None

    @property
    def met(self) -> Optional[bool]:
        """Whether layerprop's cell meets its target; None for PyTorch's rows."""
        if self.lib != "layerprop":
            return None
        return meets_target(self.setting, self.model, self.t1, self.t2)


def _checked(values: Sequence[str], allowed: Sequence[str], what: str) -> List[str]:
    out: List[str] = []
    for v in values:
        if v not in allowed:
            raise ValueError(f"unknown {what} {v!r}; expected some of {','.join(allowed)}")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError(f"no {what} given")
    return out


def run_scenarios(models: Sequence[str] = tuple(SCENARIO_MODELS), settings: Sequence[str] = SETTINGS,
                  *, torch: bool = True, quick: bool = False, rounds: Optional[int] = None,
                  seconds: Optional[float] = None, blas_threads: Optional[int] = None,
                  progress: Optional[Callable[[str], None]] = None) -> List[ScenarioRow]:
    """Time every (setting, model, library) cell at 1 and 2 threads, A/B alternating rounds.

    `torch=False` leaves out PyTorch's rows (the interleaved setting still calls PyTorch if it is
    installed: that is part of the setting). `quick` takes few steps (a smoke run, rough
    figures); `rounds` and `seconds` override the rounds per cell and the time budget of one
    measurement. `blas_threads` limits NumPy's BLAS pool to that many threads for the run
    (threadpoolctl): its idle workers then hold no core between steps (docs/threads.md). The
    thread counts of layerprop, PyTorch and the BLAS are restored afterwards, and the busy
    neighbour process is stopped and joined whatever happens."""
    import layerprop as lp
    models = _checked(models, tuple(SCENARIO_MODELS), "model")
    settings = _checked(settings, SETTINGS, "setting")
    budget = QUICK if quick else FULL
    n_rounds = budget.rounds if rounds is None else rounds
    if n_rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {n_rounds}")
    budget_s = budget.seconds if seconds is None else seconds
    blas_limit = None
    if blas_threads is not None:
        if isinstance(blas_threads, bool) or not isinstance(blas_threads, int) or blas_threads < 1:
            raise ValueError(f"blas_threads must be an integer >= 1, got {blas_threads!r}")
        try:
            import threadpoolctl
        except ImportError:
            raise ImportError("blas_threads needs threadpoolctl (pip install threadpoolctl)") from None
        blas_limit = threadpoolctl.threadpool_limits(blas_threads, user_api="blas")
    torch_mod = _torch_or_none()
    libs = [lib for lib in LIBRARIES if lib == "layerprop" or (torch and torch_mod is not None)]
    old_lp = lp.get_num_threads()
    old_torch = torch_mod.get_num_threads() if torch_mod is not None else None
    rows: List[ScenarioRow] = []
    try:
        for setting in settings:
            neighbour = None
            try:
                if setting == "busy":
                    neighbour = _Neighbour()
                between = _interleave() if setting == "interleaved" else None
                for key in models:
                    fixed = key in FIXED_STEP_MODELS
                    warmup, min_steps, seconds = ((budget.fixed_warmup, budget.fixed_steps, 0.0) if fixed
                                                  else (budget.warmup, budget.min_steps, budget_s))
                    for lib in libs:
                        step = _stepper(key, lib)
                        if step is None:
                            continue
                        if progress is not None:
                            progress(f"{setting} {key} {lib}")
                        t: Dict[int, List[float]] = {1: [], 2: []}
                        for _ in range(n_rounds):
                            for n in (1, 2):
                                _set_threads(lib, n)
                                t[n].append(_measure(step, between, warmup=warmup, min_steps=min_steps, seconds=seconds))
                        rows.append(ScenarioRow(setting, key, lib, statistics.median(t[1]),
                                                statistics.median(t[2])))
            finally:
                if neighbour is not None:
                    neighbour.stop()
    finally:
        lp.set_num_threads(old_lp)
        if torch_mod is not None:
            torch_mod.set_num_threads(old_torch)
        if blas_limit is not None:
            blas_limit.restore_original_limits()
    return rows


SCENARIO_COLUMNS = ("setting", "model", "library", "1 thread", "2 threads", "speed-up", "target", "met")


def _cells(r: ScenarioRow) -> List[str]:
    met = r.met
    return [r.setting, r.model, r.lib, _fmt_time(r.t1), _fmt_time(r.t2), f"{r.speedup:.2f}x",
            r.target or "-", "-" if met is None else ("met" if met else "missed")]


def format_scenarios(rows: Sequence[ScenarioRow], markdown: bool = False) -> str:
    """The rows as an aligned text (or Markdown) table, followed by the targets and a tally."""
    cells = [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(SCENARIO_COLUMNS) + " |",
                 "|---|---|---|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    else:
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(SCENARIO_COLUMNS)]
        right = {3, 4, 5}

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                             for i, (v, w) in enumerate(zip(values, widths))).rstrip()

        lines = [line(SCENARIO_COLUMNS), "  ".join("-" * w for w in widths)]
        lines += [line(c) for c in cells]
    judged = [r.met for r in rows if r.met is not None]
    bullet = "- " if markdown else "  "
    lines += ["", "Targets (layerprop's rows; PyTorch's are for comparison):"]
    lines += [bullet + t for t in TARGET_LINES]
    lines += ["", f"{sum(judged)} of {len(judged)} layerprop cells met their target. t1, t2: median "
                  "step time at 1 and 2 threads; speed-up = t1 / t2 (> 1: faster with 2 threads)."]
    return "\n".join(lines)
