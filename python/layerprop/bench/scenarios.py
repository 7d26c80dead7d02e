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

Every cell is the median over rounds that alternate the thread counts, in turn first (1 then 2
threads, then 2 then 1, ...), so that drift hits both. Beside each 2-thread time the table shows
what else ran: how many of layerprop's loops per step ran on two threads, and the CPUs taken by
the process's other threads (other pools' workers) and by other processes.
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
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .specs import MODELS as REFERENCE_MODELS
from .specs import ModelSpec, _torch_or_none
from .procstat import _cpu_snapshot, _other_load
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
    # "never slower than 1 thread" is >= 0.97x, the number the quiet target gives for the same words
    "interleaved": ("speed-up", 0.97, {"M": 1.7, "L": 1.7}),
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
    "interleaved: 2-thread speed-up >= 0.97x on every model, >= 1.7x on M and L",
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


# Each measurement starts with set_num_threads, which restarts layerprop's step governor: it
# times its first probe at step 32 and switches after two probes agree, about 56 steps in
# (cpp/runtime/threads.cpp). A measurement is meant to see a training loop's steady state, so
# it warms up past that, on both libraries alike. L's few long steps are timed from the start:
# its 2-thread steps pay in every setting measured.
FULL = Budget(rounds=5, seconds=0.5, min_steps=5, warmup=64, fixed_steps=3, fixed_warmup=1)
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


@dataclass
class Observation:
    """One measurement: the median step time and what else ran while it did."""
    median: float             # seconds per step
    steps: int                # timed steps
    span: float               # seconds the CPU figures cover: the timed steps' (and, without
                              # work between steps, the gaps between them)
    jobs: int                 # loops layerprop's pool ran on more than one thread (pool counter)
    other_threads: Optional[float]   # CPUs used by this process's other threads (None: unknown)
    other_procs: Optional[float]     # CPUs used by other processes (None: unknown)


def _thread_cpu() -> Optional[Dict[int, Tuple[str, float]]]:
    """{thread id: (name, CPU seconds run)} for this process's threads (Linux), or None.
    The run time comes from schedstat (nanoseconds), else from stat's ticks."""
    base = "/proc/self/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: Dict[int, Tuple[str, float]] = {}
    for tid in tids:
        try:
            with open(f"{base}/{tid}/comm") as fh:
                name = fh.read().strip()
            try:
                with open(f"{base}/{tid}/schedstat") as fh:
                    cpu = int(fh.read().split()[0]) * 1e-9
            except (OSError, ValueError, IndexError):
                with open(f"{base}/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12])) / hz   # utime, stime
            out[int(tid)] = (name, cpu)
        except (OSError, ValueError, IndexError):
            continue   # the thread has ended
    return out or None


POOL_THREAD_NAME = "layerprop-pool"   # what the core names its workers (cpp/runtime/threads.cpp)
# The kernel adds a running thread's CPU time up at its scheduler ticks (every few ms), so the
# figures of a shorter span (a few short steps timed between other work) are mostly noise:
# they are left out ("-").
MIN_CPU_SPAN = 0.2


def _other_threads_cpu(before, after, caller: int) -> Optional[float]:
    """CPU seconds run between two `_thread_cpu` snapshots by threads that are neither the
    caller nor layerprop's workers (other pools: BLAS, OpenMP, ...)."""
    if before is None or after is None:
        return None
    total = 0.0
    for tid, (name, cpu) in after.items():
        if tid == caller or name == POOL_THREAD_NAME:
            continue
        total += cpu - before.get(tid, (name, 0.0))[1]
    return max(0.0, total)


def _observe(step: Callable[[], object], between: Optional[Callable[[], None]], *, warmup: int,
             min_steps: int, seconds: float) -> Observation:
    """Median time of one step: `warmup` untimed steps, then at least `min_steps` timed ones and
    as many more as fit in `seconds`; `between` (if given) runs after every step, untimed. And
    what ran beside the timed steps: layerprop's parallel loops, and the CPU time of this
    process's other threads and of other processes, per second of those steps. With `between`,
    what runs between steps is left out: the CPU counters are read around each step (outside
    its time)."""
    from layerprop import _core
    caller = threading.get_native_id()
    for _ in range(warmup):
        step()
        if between is not None:
            between()
    per_step = between is not None
    times: List[float] = []
    threads_cpu: Optional[float] = 0.0
    procs_cpu: Optional[float] = 0.0

    def add(t0, t1, p0, p1, span: float) -> None:
        nonlocal threads_cpu, procs_cpu
        o = _other_threads_cpu(t0, t1, caller)
        threads_cpu = None if o is None or threads_cpu is None else threads_cpu + o
        p = _other_load(p0, p1)
        procs_cpu = None if p is None or procs_cpu is None else procs_cpu + p * span

    stats0 = _core._pool_stats()
    w0, th0, pr0 = time.perf_counter(), _thread_cpu(), _cpu_snapshot()
    end = time.perf_counter() + seconds
    while len(times) < min_steps or time.perf_counter() < end:
        if per_step:
            th0, pr0 = _thread_cpu(), _cpu_snapshot()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if between is not None:
            th1, pr1 = _thread_cpu(), _cpu_snapshot()
            add(th0, th1, pr0, pr1, times[-1])
            between()
    span = sum(times) if per_step else time.perf_counter() - w0
    if not per_step:
        add(th0, _thread_cpu(), pr0, _cpu_snapshot(), span)
    stats1 = _core._pool_stats()
    if span < MIN_CPU_SPAN:
        threads_cpu = procs_cpu = None
    return Observation(statistics.median(times), len(times), span,
                       stats1["jobs"] - stats0["jobs"],
                       None if threads_cpu is None else threads_cpu / span,
                       None if procs_cpu is None else procs_cpu / span)


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
    # While the 2-thread steps ran (medians over the rounds; None where not known):
    jobs: Optional[float] = None          # layerprop's loops run on 2 threads, per step
    other_threads: Optional[float] = None  # CPUs used by the process's other threads (other pools)
    other_procs: Optional[float] = None    # CPUs used by other processes

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


def _median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _row(setting: str, key: str, lib: str, one: Sequence[Observation], two: Sequence[Observation]) -> ScenarioRow:
    """A cell from its rounds: median step times, and what ran beside the 2-thread steps."""
    if lib != "layerprop":   # its own workers are threads of the process too: not told apart
        return ScenarioRow(setting, key, lib, statistics.median([o.median for o in one]),
                           statistics.median([o.median for o in two]), None, None,
                           _median_or_none([o.other_procs for o in two]))
    return ScenarioRow(setting, key, lib, statistics.median([o.median for o in one]),
                       statistics.median([o.median for o in two]),
                       _median_or_none([o.jobs / o.steps for o in two]),
                       _median_or_none([o.other_threads for o in two]),
                       _median_or_none([o.other_procs for o in two]))


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
                        obs: Dict[int, List[Observation]] = {1: [], 2: []}
                        for r in range(n_rounds):
                            for n in ((1, 2) if r % 2 == 0 else (2, 1)):   # ABBA: neither goes first always
                                _set_threads(lib, n)
                                obs[n].append(_observe(step, between, warmup=warmup, min_steps=min_steps,
                                                       seconds=seconds))
                        rows.append(_row(setting, key, lib, obs[1], obs[2]))
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


SCENARIO_COLUMNS = ("setting", "model", "library", "1 thread", "2 threads", "speed-up", "2-thread loops",
                    "other threads", "other procs", "target", "met")
COLUMN_NOTES = (
    "2-thread loops: layerprop's loops per step that ran on two threads, in its 2-thread steps "
    "(0: every loop ran on one, as its thresholds, the probe of other busy threads or the step "
    "governor decided)",
    "other threads, other procs: CPUs used, while layerprop's 2-thread steps ran, by this "
    "process's other threads (other pools' workers: BLAS, OpenMP) and by other processes "
    "('-': the steps timed were too short to tell)",
)


def _cells(r: ScenarioRow) -> List[str]:
    met = r.met

    def cpus(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f}"

    return [r.setting, r.model, r.lib, _fmt_time(r.t1), _fmt_time(r.t2), f"{r.speedup:.2f}x",
            "-" if r.jobs is None else f"{r.jobs:.1f}", cpus(r.other_threads), cpus(r.other_procs),
            r.target or "-", "-" if met is None else ("met" if met else "missed")]


def format_scenarios(rows: Sequence[ScenarioRow], markdown: bool = False) -> str:
    """The rows as an aligned text (or Markdown) table, followed by the targets and a tally."""
    cells = [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(SCENARIO_COLUMNS) + " |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
    else:
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(SCENARIO_COLUMNS)]
        right = {3, 4, 5, 6, 7, 8}

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                             for i, (v, w) in enumerate(zip(values, widths))).rstrip()

        lines = [line(SCENARIO_COLUMNS), "  ".join("-" * w for w in widths)]
        lines += [line(c) for c in cells]
    judged = [r.met for r in rows if r.met is not None]
    bullet = "- " if markdown else "  "
    lines += ["", "Targets (layerprop's rows; PyTorch's are for comparison):"]
    lines += [bullet + t for t in TARGET_LINES]
    lines += ["", "Columns:"] + [bullet + t for t in COLUMN_NOTES]
    lines += ["", f"{sum(judged)} of {len(judged)} layerprop cells met their target. t1, t2: median "
                  "step time at 1 and 2 threads; speed-up = t1 / t2 (> 1: faster with 2 threads)."]
    return "\n".join(lines)
