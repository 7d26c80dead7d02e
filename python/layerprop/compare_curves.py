"""`layerprop compare --task curves`: the LocoProp paper's deep autoencoder on CURVES-style data,
against first-order baselines whose learning rates are tuned by a stated sweep.

The network is the paper's: 784-1000-500-250-30-250-500-1000-784, tanh hidden units, a linear
30-unit code, and the last Linear's logits into bce_with_logits (a sigmoid output with binary
cross-entropy), batch 1000, on layerprop.datasets.curves (seed 0; the first `rows` images train,
the next 1000 are held out). With BatchNorm, a BatchNorm1d sits between each hidden Linear
and its tanh (not after the code layer nor the output layer).

Schedules:

- "sgd", "adam", "rmsprop": backprop (Simultaneous) with SGD (momentum 0.9), Adam and RMSprop;
- "locoprop_s", "locoprop_m": LocoProp S and M, K = 10 inner steps, gamma = 10 in the paper's
  units (units="paper"), RMSprop as the optimizer of the local problems, as in the paper;
- "top_down", "bottom_up": Layerwise, with the first-order optimizer and learning rate that
  reached the lowest loss in the sweep.

The sweep: every schedule with a grid (the three baselines and both LocoProp variants) is
trained from seed 0 without BatchNorm for `sweep_epochs` epochs at each learning rate of its
grid; the learning rate with the lowest training loss in the last sweep epoch is chosen (runs
that diverge are out). The chosen rates serve every seed, with and without BatchNorm.

Each run then trains for `epochs` epochs; the three baselines continue to `long_epochs`, so
that they can be compared with the slower schedules at equal wall time. Recorded per run: the
training loss per epoch (the mean over the epoch's batches, as fit reports it), the wall time
of each epoch (training only: no compile, no evaluation), the BCE of the whole training set
and of the held-out images after `epochs` epochs, and the node operations of one step.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["SIZES", "QUICK_SIZES", "SCHEDULES", "GRIDS", "Budget", "FULL", "QUICK", "SweepResult",
           "CurvesRun", "CurvesReport", "build_layers", "load_data", "pick_lr", "sweep",
           "run_curves", "format_curves", "plot_curves", "loss_at_time"]

SIZES = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
QUICK_SIZES = (784, 64, 32, 16, 8, 16, 32, 64, 784)
GAMMA = 10.0
INNER_STEPS = 10
MOMENTUM = 0.9
N_TEST = 1000
DATA_SEED = 0

SCHEDULES = ("sgd", "adam", "rmsprop", "locoprop_s", "locoprop_m", "top_down", "bottom_up")
BASELINES = ("sgd", "adam", "rmsprop")
LABELS = {"sgd": "SGD-momentum", "adam": "Adam", "rmsprop": "RMSprop", "locoprop_s": "LocoProp S",
          "locoprop_m": "LocoProp M", "top_down": "Layerwise top_down", "bottom_up": "Layerwise bottom_up"}
# Learning-rate grids of the sweep (half-decade steps). layerprop's bce_with_logits averages over
# the 784 outputs, so plain SGD needs a far larger rate than the adaptive optimizers.
GRIDS: Dict[str, Tuple[float, ...]] = {
    "sgd": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
    "adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "rmsprop": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "locoprop_s": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "locoprop_m": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
}


@dataclass(frozen=True)
class Budget:
    """The size of a curves comparison."""
    rows: int            # training images
    n_test: int          # held-out images
    batch: int
    epochs: int          # epochs of every schedule (the equal-epochs comparison)
    long_epochs: int     # epochs of the first-order baselines (for equal wall time)
    sweep_epochs: int
    seeds: Tuple[int, ...]
    sizes: Tuple[int, ...] = SIZES


FULL = Budget(rows=5000, n_test=N_TEST, batch=1000, epochs=8, long_epochs=32, sweep_epochs=2, seeds=(0, 1))
QUICK = Budget(rows=64, n_test=32, batch=32, epochs=1, long_epochs=4, sweep_epochs=1, seeds=(0,),
               sizes=QUICK_SIZES)


@dataclass
class SweepResult:
    schedule: str
    grid: Tuple[float, ...]
    losses: List[float]      # the last sweep epoch's training loss per lr (nan: diverged)
    lr: float                # the choice

    @property
    def at_edge(self) -> bool:
        return self.lr in (self.grid[0], self.grid[-1])


@dataclass
class CurvesRun:
    schedule: str
    label: str
    optimizer: str           # e.g. "Adam(lr=0.001)"
    bn: bool
    seed: int
    epochs: int              # the equal-epochs point
    losses: List[float]      # training loss per epoch (all epochs run)
    epoch_seconds: List[float]
    steps_per_epoch: int
    train_bce: float         # whole training set, after `epochs` epochs
    test_bce: float          # held-out images, after `epochs` epochs
    forward: int
    backward: int

    @property
    def ms_per_step(self) -> float:
        return 1e3 * float(np.nanmedian(self.epoch_seconds)) / self.steps_per_epoch

    @property
    def total_seconds(self) -> float:
        return float(np.nansum(self.epoch_seconds))


@dataclass
class CurvesReport:
    budget: Budget
    sweeps: Dict[str, SweepResult]
    runs: List[CurvesRun]
    threads: int
    quick: bool
    seconds: float
    layerwise_optimizer: str = ""

    def to_json(self) -> str:
        """Every figure of the report as JSON (nan as null); from_json reads it back."""
        import dataclasses
        import json

        def clean(v: Any) -> Any:
            if isinstance(v, float):
                return v if math.isfinite(v) else None
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v
        return json.dumps(clean(dataclasses.asdict(self)), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CurvesReport":
        import json

        def nan(v: Any) -> Any:
            if v is None:
                return math.nan
            if isinstance(v, list):
                return [nan(x) for x in v]
            return v
        d = json.loads(text)
        b = d["budget"]
        budget = Budget(**{**b, "seeds": tuple(b["seeds"]), "sizes": tuple(b["sizes"])})
        sweeps = {k: SweepResult(v["schedule"], tuple(v["grid"]), nan(v["losses"]), v["lr"])
                  for k, v in d["sweeps"].items()}
        runs = [CurvesRun(**{k: nan(v) if k in ("losses", "epoch_seconds", "train_bce", "test_bce") else v
                             for k, v in r.items()}) for r in d["runs"]]
        return cls(budget, sweeps, runs, d["threads"], d["quick"], d["seconds"], d["layerwise_optimizer"])


def build_layers(bn: bool, sizes: Sequence[int] = SIZES) -> List[Any]:
    """The autoencoder's layers: tanh after every hidden Linear except the code layer (the
    narrowest), no activation on the output logits; with bn, a BatchNorm1d before each tanh."""
    import layerprop as lp
    sizes = tuple(sizes)
    code = sizes.index(min(sizes[1:-1]))
    pairs = list(zip(sizes[:-1], sizes[1:]))
    layers: List[Any] = []
    for i, (a, b) in enumerate(pairs):
        layers.append(lp.Linear(a, b))
        if i + 1 == code or i == len(pairs) - 1:
            continue
        if bn:
            layers.append(lp.BatchNorm1d(b))
        layers.append(lp.Tanh())
    return layers


def load_data(budget: Budget) -> Tuple[np.ndarray, np.ndarray]:
    """(training images, held-out images) from layerprop.datasets.curves(seed=0)."""
    from .datasets import curves
    X = curves(budget.rows + budget.n_test, seed=DATA_SEED)
    return X[:budget.rows], X[budget.rows:]


def pick_lr(grid: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate of the lowest finite loss (the first on ties)."""
    if len(grid) != len(losses) or not grid:
        raise ValueError("pick_lr: expected one loss per learning rate of a non-empty grid")
    finite = [(loss, k) for k, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        raise ValueError("pick_lr: every learning rate of the grid diverged")
    return float(grid[min(finite)[1]])


def _optimizer(schedule: str, lr: float, layerwise_base: Optional[str] = None):
    import layerprop as lp
    kind = layerwise_base if schedule in ("top_down", "bottom_up") else schedule
    if kind == "sgd":
        return lp.SGD(lr=lr, momentum=MOMENTUM)
    if kind == "adam":
        return lp.Adam(lr=lr)
    return lp.RMSprop(lr=lr)  # rmsprop, and LocoProp's local problems


def _optimizer_text(opt: Any) -> str:
    name = type(opt).__name__
    if name == "SGD":
        return f"SGD(lr={opt.lr:g}, momentum={opt.momentum:g})"
    return f"{name}(lr={opt.lr:g})"


def _schedule(schedule: str):
    import layerprop as lp
    if schedule in BASELINES:
        return lp.Simultaneous()
    if schedule in ("top_down", "bottom_up"):
        return lp.Layerwise(order=schedule)
    return lp.LocoProp(variant=schedule[-1].upper(), inner_steps=INNER_STEPS, target_lr=GAMMA,
                       units="paper")


def _model(schedule: str, opt: Any, bn: bool, seed: int, sizes: Sequence[int]):
    import layerprop as lp
    model = lp.Sequential(*build_layers(bn, sizes), dtype="float32", seed=seed)
    with warnings.catch_warnings():  # M's fallback to S after BatchNorm is documented
        warnings.filterwarnings("ignore", message=r"LocoProp\('M'\)")
        model.compile(loss="bce_with_logits", optimizer=opt, schedule=_schedule(schedule))
    return model


def _fit(model, X, epochs: int, batch: int, initial_epoch: int = 0) -> Tuple[List[float], List[float]]:
    """(training loss per epoch, seconds per epoch). A step with a non-finite loss or gradient
    ends the run: its epoch's loss is nan."""
    from ._core import NonFiniteError
    from .compare import _epoch_timer
    rec = _epoch_timer()
    try:
        model.fit(X, X, epochs=epochs, batch_size=batch, shuffle=True, callbacks=[rec], progress=False,
                  initial_epoch=initial_epoch)
    except NonFiniteError:
        rec.losses.append(math.nan)
        rec.seconds.append(math.nan)
    return rec.losses, rec.seconds


def sweep(schedule: str, X: np.ndarray, budget: Budget, grid: Optional[Sequence[float]] = None,
          progress: Optional[Callable[[str], None]] = None) -> SweepResult:
    """Train `schedule` from seed 0 without BatchNorm for budget.sweep_epochs at every lr of
    its grid; choose the lr of the lowest last-epoch training loss."""
    grid = tuple(GRIDS[schedule] if grid is None else grid)
    losses: List[float] = []
    for lr in grid:
        if progress is not None:
            progress(f"sweep {LABELS[schedule]} lr={lr:g}")
        model = _model(schedule, _optimizer(schedule, lr), False, budget.seeds[0], budget.sizes)
        hist, _ = _fit(model, X, budget.sweep_epochs, budget.batch)
        losses.append(hist[-1])  # nan if it diverged
    return SweepResult(schedule, grid, losses, pick_lr(grid, losses))


def run_curves(schedules: Sequence[str] = SCHEDULES, bn_modes: Sequence[bool] = (False, True),
               budget: Budget = FULL, quick: bool = False,
               progress: Optional[Callable[[str], None]] = None) -> CurvesReport:
    """The sweep, then every (BatchNorm, seed, schedule) run."""
    import layerprop as lp
    for s in schedules:
        if s not in SCHEDULES:
            raise ValueError(f"schedules: unknown curves schedule {s!r} (choose from {', '.join(SCHEDULES)})")
    if not schedules or not bn_modes or not budget.seeds:
        raise ValueError("run_curves: expected at least one schedule, BatchNorm mode and seed")
    if budget.long_epochs < budget.epochs:
        raise ValueError(f"long_epochs: expected at least epochs ({budget.epochs}), got {budget.long_epochs}")
    t_start = time.perf_counter()
    Xtr, Xte = load_data(budget)
    layerwise = [s for s in schedules if s in ("top_down", "bottom_up")]
    tuned = [s for s in SCHEDULES if s in GRIDS and (s in schedules or (layerwise and s in BASELINES))]
    sweeps = {s: sweep(s, Xtr, budget, progress=progress) for s in tuned}
    base = None
    if layerwise:
        base = min(BASELINES, key=lambda s: min(v for v in sweeps[s].losses if math.isfinite(v)))
    runs: List[CurvesRun] = []
    steps = -(-budget.rows // budget.batch)
    for bn in bn_modes:
        for seed in budget.seeds:
            for s in schedules:
                lr = sweeps[base if s in ("top_down", "bottom_up") else s].lr  # type: ignore[index]
                opt = _optimizer(s, lr, base)
                if progress is not None:
                    progress(f"{LABELS[s]}, {_optimizer_text(opt)}, BatchNorm {'yes' if bn else 'no'}, seed {seed}")
                model = _model(s, opt, bn, seed, budget.sizes)
                losses, secs = _fit(model, Xtr, budget.epochs, budget.batch)
                cost = model.step_cost()
                diverged = not all(math.isfinite(v) for v in losses)
                train_bce = math.nan if diverged else float(model.evaluate(Xtr, Xtr)["loss"])
                test_bce = math.nan if diverged else float(model.evaluate(Xte, Xte)["loss"])
                if s in BASELINES and budget.long_epochs > budget.epochs and not diverged:
                    more, more_secs = _fit(model, Xtr, budget.long_epochs, budget.batch,
                                           initial_epoch=budget.epochs)
                    losses, secs = losses + more, secs + more_secs
                runs.append(CurvesRun(s, LABELS[s], _optimizer_text(opt), bn, seed, budget.epochs, losses,
                                      secs, steps, train_bce, test_bce, cost["forward"], cost["backward"]))
    return CurvesReport(budget, sweeps, runs, lp.get_num_threads(), quick, time.perf_counter() - t_start,
                        layerwise_optimizer=LABELS[base] if base else "")


# ---------------------------------------------------------------------------------- output
def loss_at_time(run: CurvesRun, seconds: float) -> Tuple[float, int]:
    """(training loss of the last epoch finished within `seconds` of training, its epoch count);
    (nan, 0) when not even one epoch was."""
    done = int(np.searchsorted(np.cumsum(np.nan_to_num(run.epoch_seconds, nan=np.inf)), seconds * (1 + 1e-9), side="right"))
    return (run.losses[done - 1], done) if done else (math.nan, 0)


def equal_time(report: CurvesReport, bn: bool) -> float:
    """The common wall-time budget of a BatchNorm mode: the shortest mean total training time
    of its schedules (every run has trained at least that long)."""
    totals: Dict[str, List[float]] = {}
    for r in report.runs:
        if r.bn == bn:
            totals.setdefault(r.schedule, []).append(r.total_seconds)
    return min(float(np.mean(v)) for v in totals.values())


def _stat(values: Sequence[float], digits: int = 4) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "diverged"
    mean = f"{np.mean(v):.{digits}f}"
    if len(values) == 1:
        return mean
    extra = "" if len(v) == len(values) else f", {len(values) - len(v)} diverged"
    return f"{mean} [{min(v):.{digits}f}, {max(v):.{digits}f}{extra}]"


CURVES_COLUMNS = ("schedule", "optimizer", "BN", "loss @E", "train BCE @E", "test BCE @E", "loss @T",
                  "epochs by T", "ms/step", "ops/step", "time vs SGD")


def _curves_rows(report: CurvesReport) -> List[Tuple[str, ...]]:
    rows: List[Tuple[str, ...]] = []
    for bn in dict.fromkeys(r.bn for r in report.runs):
        T = equal_time(report, bn)
        group = [r for r in report.runs if r.bn == bn]
        ref = [r.ms_per_step for r in group if r.schedule == "sgd"]
        for s in dict.fromkeys(r.schedule for r in group):
            rs = [r for r in group if r.schedule == s]
            at_t = [loss_at_time(r, T) for r in rs]
            ms = float(np.mean([r.ms_per_step for r in rs]))
            rows.append((rs[0].label, rs[0].optimizer, "yes" if bn else "no",
                         _stat([r.losses[r.epochs - 1] if len(r.losses) >= r.epochs else math.nan for r in rs]),
                         _stat([r.train_bce for r in rs]), _stat([r.test_bce for r in rs]),
                         _stat([v for v, n in at_t if n]) if any(n for _, n in at_t) else "none yet",
                         "/".join(str(n) for _, n in at_t),
                         f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}",
                         f"{rs[0].forward}+{rs[0].backward}={rs[0].forward + rs[0].backward}",
                         f"{ms / float(np.mean(ref)):.1f}x" if ref else "n/a"))
    return rows


def _sweep_lines(report: CurvesReport) -> List[str]:
    b = report.budget
    lines = [f"learning-rate sweep: seed {b.seeds[0]}, no BatchNorm, {b.sweep_epochs} epoch"
             f"{'s' * (b.sweep_epochs != 1)}; last-epoch training loss per lr (chosen: *)"]
    for s, sw in report.sweeps.items():
        cells = [f"{lr:g}: {'diverged' if not math.isfinite(v) else f'{v:.4f}'}{'*' if lr == sw.lr else ''}"
                 for lr, v in zip(sw.grid, sw.losses)]
        edge = "  (at the grid's edge)" if sw.at_edge else ""
        lines.append(f"  {LABELS[s]:<13s} " + "  ".join(cells) + edge)
    if report.layerwise_optimizer:
        lines.append(f"  Layerwise uses the sweep's best first-order optimizer: {report.layerwise_optimizer}")
    return lines


def format_curves(report: CurvesReport, markdown: bool = False) -> str:
    b = report.budget
    net = "-".join(str(n) for n in b.sizes)
    head = (f"layerprop compare, curves: autoencoder {net} tanh, BCE; {b.rows} training / {b.n_test} held-out "
            f"curves images (seed {DATA_SEED}), batch {b.batch}, E = {b.epochs} epoch{'s' * (b.epochs != 1)} "
            f"(first-order baselines to {b.long_epochs}), seeds {','.join(map(str, b.seeds))}, "
            f"{report.threads} thread{'s' * (report.threads != 1)}" + (" (--quick)" if report.quick else ""))
    rows = _curves_rows(report)
    right = [False, False, False] + [True] * (len(CURVES_COLUMNS) - 3)
    if markdown:
        table = ["| " + " | ".join(CURVES_COLUMNS) + " |",
                 "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        table += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        allrows = [CURVES_COLUMNS, *rows]
        widths = [max(len(r[k]) for r in allrows) for k in range(len(CURVES_COLUMNS))]

        def line(row: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(row, widths, right)).rstrip()
        table = [line(CURVES_COLUMNS), "-" * len(line(CURVES_COLUMNS))]
        prev = None
        for row in rows:
            if prev is not None and row[2] != prev:
                table.append("")
            prev = row[2]
            table.append(line(row))
    ts = ", ".join(f"{'with' if bn else 'without'} BN {equal_time(report, bn):.1f} s"
                   for bn in dict.fromkeys(r.bn for r in report.runs))
    foot = ["loss @E: training loss of epoch E as fit reports it (mean over the epoch's batches); "
            "train/test BCE @E: the whole training set / the held-out images after E epochs",
            f"loss @T: training loss of the last epoch finished within T of training, T = the shortest "
            f"mean training time of the schedules ({ts}); epochs by T: per seed",
            "ms/step: median epoch time / steps per epoch; ops/step: node forward+backward executions of "
            "one step; time vs SGD: ms/step relative to SGD-momentum; values: mean [min, max] over seeds",
            f"LocoProp: K = {INNER_STEPS} inner steps, gamma = {GAMMA:g} in the paper's units, RMSprop on the "
            f"local problems; SGD momentum {MOMENTUM:g}",
            f"total {report.seconds:.1f} s"]
    return "\n".join([head, ""] + _sweep_lines(report) + [""] + table + [""] + foot)


def plot_curves(report: CurvesReport, path: str) -> None:
    """Training loss per epoch (left) and against cumulative wall time (right), the mean over
    seeds; one row per BatchNorm mode. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure
    modes = list(dict.fromkeys(r.bn for r in report.runs))
    colors = {k: f"C{i}" for i, k in enumerate(SCHEDULES)}
    fig = Figure(figsize=(10, 3.6 * len(modes)), dpi=80, layout="constrained")
    axes = fig.subplots(len(modes), 2, squeeze=False)
    for row, bn in zip(axes, modes):
        group = [r for r in report.runs if r.bn == bn]
        for s in dict.fromkeys(r.schedule for r in group):
            rs = [r for r in group if r.schedule == s]
            n = min(len(r.losses) for r in rs)
            if n == 0:
                continue
            loss = np.mean([r.losses[:n] for r in rs], axis=0)
            secs = np.mean([np.cumsum(r.epoch_seconds[:n]) for r in rs], axis=0)
            style = dict(color=colors[s], linewidth=1.4, marker="o", markersize=2.5,
                         linestyle="--" if s in ("top_down", "bottom_up") else "-", label=rs[0].label)
            row[0].plot(np.arange(1, n + 1), loss, **style)
            row[1].plot(secs, loss, **style)
        for ax, xlabel in zip(row, ("epoch", "training wall time (s)")):
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("training loss (BCE)")
            ax.set_title(f"curves autoencoder, {'with' if bn else 'no'} BatchNorm", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        row[0].axvline(report.budget.epochs, color="0.6", linewidth=0.8)
        row[1].axvline(equal_time(report, bn), color="0.6", linewidth=0.8)
        row[1].set_xscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.savefig(path)
