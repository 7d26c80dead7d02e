"""`layerprop compare`: one architecture trained under every update schedule, with and without
BatchNorm, on built-in data; one table and a loss-curve plot.

Tasks (scikit-learn's 8x8 digits, pixels / 16, stratified 75/25 split, random_state=0):

- "digits": a 64-128-128-10 ReLU classifier, cross-entropy; test metric: accuracy.
- "autoencoder": a deep autoencoder in the spirit of the LocoProp paper's, scaled to 64
  pixels: 64-256-128-64-16-64-128-256-64, tanh, a linear 16-unit code, and the last Linear's
  logits into bce_with_logits (a sigmoid output with binary cross-entropy); test metric: the
  test set's BCE.

With BatchNorm, a BatchNorm1d sits between each hidden Linear and its activation (not after
the code layer nor the output layer). Every run: Adam(lr=1e-3), batch 32, the same seed, so
the same initial weights (BatchNorm draws nothing) and the same batch order.

Per run the table has the last epoch's training loss (the mean over its batches, as fit
reports it), the test metric, the median wall time of an epoch, the node operations of one
training step (model.step_cost(): forward + backward executions), and the moving target at
the end: lp.explain.moving_target on a fixed probe batch (the first 256 training rows) with a
plain gradient step of --probe-lr, the mean over layers of the cosine between a layer's
gradient before and after the other layers step, and the largest relative drift of a layer
input's variance with that step.

The "curves" task (`--task curves`, not in the default set) is the LocoProp paper's deep
autoencoder on CURVES-style images, against first-order baselines with swept learning rates;
see layerprop.compare_curves.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import validation as V


__all__ = ["TASKS", "SCHEDULES", "Task", "Result", "Report", "load_data", "run", "format_table", "plot",
           "add_parser"]

LR = 1e-3
BATCH = 32
PROBE_ROWS = 256
DEFAULT_EPOCHS = 30
QUICK_ROWS = 192  # --quick: training rows (and probe rows: 64)
AE_SIZES = (64, 256, 128, 64, 16, 64, 128, 256, 64)


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    loss: str
    metric: str                                  # "accuracy" or "BCE"
    build: Callable[[bool], List[Any]]           # bn -> layers


def _digits_layers(bn: bool) -> List[Any]:
    import layerprop as lp
    layers: List[Any] = []
    for a, b in ((64, 128), (128, 128)):
        layers.append(lp.Linear(a, b))
        if bn:
            layers.append(lp.BatchNorm1d(b))
        layers.append(lp.ReLU())
    layers.append(lp.Linear(128, 10))
    return layers


def _autoencoder_layers(bn: bool) -> List[Any]:
    import layerprop as lp
    layers: List[Any] = []
    code = AE_SIZES.index(min(AE_SIZES))
    pairs = list(zip(AE_SIZES[:-1], AE_SIZES[1:]))
    for i, (a, b) in enumerate(pairs):
        layers.append(lp.Linear(a, b))
        if i + 1 == code or i == len(pairs) - 1:  # the linear code layer; the output logits
            continue
        if bn:
            layers.append(lp.BatchNorm1d(b))
        layers.append(lp.Tanh())
    return layers


TASKS: Dict[str, Task] = {
    "digits": Task("digits", "digits classifier 64-128-128-10 ReLU", "cross_entropy", "accuracy",
                   _digits_layers),
    "autoencoder": Task("autoencoder", "digits autoencoder 64-256-128-64-16-64-128-256-64 tanh",
                        "bce_with_logits", "BCE", _autoencoder_layers),
}


def _schedule_factories() -> Dict[str, Tuple[str, Callable[[], Any]]]:
    import layerprop as lp
    return {
        "simultaneous": ("Simultaneous", lambda: lp.Simultaneous()),
        "top_down": ("Layerwise top_down", lambda: lp.Layerwise(order="top_down")),
        "bottom_up": ("Layerwise bottom_up", lambda: lp.Layerwise(order="bottom_up")),
        "locoprop_s": ("LocoProp S", lambda: lp.LocoProp(variant="S")),
        "locoprop_m": ("LocoProp M", lambda: lp.LocoProp(variant="M")),
    }


SCHEDULES = ("simultaneous", "top_down", "bottom_up", "locoprop_s", "locoprop_m")


@dataclass
class Result:
    task: str
    schedule: str            # key of SCHEDULES
    label: str               # e.g. "Layerwise top_down"
    bn: bool
    train_loss: float
    test_metric: float
    metric: str
    epoch_seconds: List[float]
    forward: int
    backward: int
    mt_cosine: float         # mean over layers
    mt_var_drift: float      # max over layers
    losses: List[float] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.median(self.epoch_seconds)) if self.epoch_seconds else math.nan

    @property
    def ops(self) -> int:
        return self.forward + self.backward


@dataclass
class Report:
    results: List[Result]
    epochs: int
    threads: int
    quick: bool
    probe_lr: float
    n_train: int
    n_test: int
    seconds: float


def _epoch_timer():
    """A callback recording each epoch's wall time (training only) and training loss."""
    from .training import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.seconds: List[float] = []
            self.losses: List[float] = []
            self._t0 = 0.0

        def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
            self.seconds.append(time.perf_counter() - self._t0)
            self.losses.append(float((logs or {}).get("loss", math.nan)))

    return EpochTimer()


def load_data(quick: bool = False):
    """(X_train, X_test, y_train, y_test) of digits, pixels / 16, stratified 75/25 split with
    random_state=0; None without scikit-learn. --quick keeps the first QUICK_ROWS training rows."""
    from .datasets import digits_split
    split = digits_split(0)
    if split is None:
        return None
    Xtr, Xte, ytr, yte = split
    if quick:
        Xtr, ytr = Xtr[:QUICK_ROWS], ytr[:QUICK_ROWS]
    return Xtr, Xte, ytr, yte


def run(tasks: Sequence[str] = tuple(TASKS), schedules: Sequence[str] = SCHEDULES,
        bn_modes: Sequence[bool] = (False, True), epochs: int = DEFAULT_EPOCHS, *,
        quick: bool = False, seed: int = 0, probe_lr: float = 0.1,
        progress: Optional[Callable[[str], None]] = None) -> Report:
    """Train every (task, BatchNorm, schedule) combination and collect the figures."""
    import layerprop as lp
    data = load_data(quick)
    if data is None:
        raise ImportError("layerprop compare needs scikit-learn for its digits data: "
                          "pip install 'layerprop[sklearn]'")
    Xtr, Xte, ytr, yte = data
    probe = slice(0, 64 if quick else PROBE_ROWS)
    factories = _schedule_factories()
    results: List[Result] = []
    t_start = time.perf_counter()
    for tname in tasks:
        task = TASKS[tname]
        y_train, y_test = (ytr, yte) if task.loss == "cross_entropy" else (Xtr, Xte)
        for bn in bn_modes:
            for skey in schedules:
                label, make = factories[skey]
                if progress is not None:
                    progress(f"{tname}, {label}, BatchNorm {'yes' if bn else 'no'}")
                model = lp.Sequential(*task.build(bn), dtype="float32", seed=seed)
                with warnings.catch_warnings():  # M's fallback under BatchNorm is documented
                    warnings.filterwarnings("ignore", message=r"LocoProp\('M'\)")
                    model.compile(loss=task.loss, optimizer=lp.Adam(lr=LR), schedule=make())
                timer = _epoch_timer()
                hist = model.fit(Xtr, y_train, epochs=epochs, batch_size=BATCH, shuffle=True,
                                 callbacks=[timer], progress=False)
                cost = model.step_cost()  # of the last training step
                ev = model.evaluate(Xte, y_test)
                test_metric = ev["accuracy"] if task.metric == "accuracy" else ev["loss"]
                mt = lp.explain.moving_target(model, Xtr[probe], y_train[probe], lr=probe_lr)
                cos = [c for c in mt.cosine.values() if math.isfinite(c)]
                results.append(Result(
                    task=tname, schedule=skey, label=label, bn=bn,
                    train_loss=hist.history["loss"][-1], test_metric=float(test_metric),
                    metric=task.metric, epoch_seconds=timer.seconds, forward=cost["forward"],
                    backward=cost["backward"], mt_cosine=float(np.mean(cos)) if cos else math.nan,
                    mt_var_drift=max(mt.var_drift.values()), losses=list(hist.history["loss"])))
    return Report(results, epochs, lp.get_num_threads(), quick, probe_lr, len(Xtr), len(Xte),
                  time.perf_counter() - t_start)


# ---------------------------------------------------------------------------------- output
COLUMNS = ("task", "schedule", "BN", "train loss", "test metric", "ms/epoch", "ops/step",
           "vs simultaneous", "MT cosine", "MT var drift")


def _fmt_time_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def _rows(report: Report) -> List[Tuple[str, ...]]:
    base = {(r.task, r.bn): r.ops for r in report.results if r.schedule == "simultaneous"}
    rows: List[Tuple[str, ...]] = []
    for r in report.results:
        metric = f"acc {r.test_metric:.4f}" if r.metric == "accuracy" else f"BCE {r.test_metric:.4f}"
        ref = base.get((r.task, r.bn))
        rel = f"{r.ops / ref:.1f}x" if ref else "n/a"
        rows.append((r.task, r.label, "yes" if r.bn else "no", f"{r.train_loss:.4g}", metric,
                     _fmt_time_ms(r.seconds_per_epoch), f"{r.forward}+{r.backward}={r.ops}", rel,
                     f"{r.mt_cosine:.4f}", f"{r.mt_var_drift:.2e}"))
    return rows


def format_table(report: Report, markdown: bool = False) -> str:
    rows = _rows(report)
    right = [False, False, False, True, True, True, True, True, True, True]
    head = (f"layerprop compare: {report.epochs} epoch{'s' * (report.epochs != 1)}, batch {BATCH}, "
            f"Adam(lr={LR:g}), {report.threads} thread{'s' * (report.threads != 1)}, "
            f"{report.n_train} training / {report.n_test} test digits"
            + (" (--quick)" if report.quick else ""))
    foot = ["ms/epoch: median wall time of an epoch; ops/step: node forward+backward executions of "
            "one training step (model.step_cost())",
            f"MT: lp.explain.moving_target at the end on {64 if report.quick else PROBE_ROWS} "
            f"training rows, plain gradient step lr={report.probe_lr:g}: mean cosine over layers, "
            f"largest input-variance drift",
            f"total {report.seconds:.1f} s"]
    if markdown:
        lines = [head, "", "| " + " | ".join(COLUMNS) + " |",
                 "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + [""] + foot)
    table = [COLUMNS, *rows]
    widths = [max(len(r[k]) for r in table) for k in range(len(COLUMNS))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(row, widths, right)).rstrip()

    lines = [head, "", line(COLUMNS), "-" * len(line(COLUMNS))]
    prev = None
    for row in rows:
        if prev is not None and row[:3:2] != prev:  # a blank line between (task, BN) groups
            lines.append("")
        prev = row[:3:2]
        lines.append(line(row))
    return "\n".join(lines + [""] + foot)


def plot(report: Report, path: str) -> None:
    """Training loss per epoch (left) and against cumulative wall time (right), one row per
    task; solid without BatchNorm, dashed with. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global state involved
    tasks = list(dict.fromkeys(r.task for r in report.results))
    colors = {k: f"C{i}" for i, k in enumerate(SCHEDULES)}
    fig = Figure(figsize=(10, 3.4 * len(tasks)), dpi=80, layout="constrained")
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    for row, tname in zip(axes, tasks):
        for r in (r for r in report.results if r.task == tname):
            style = dict(color=colors[r.schedule], linestyle="--" if r.bn else "-", linewidth=1.4,
                         marker="o", markersize=2.5,
                         label=f"{r.label}{' + BN' if r.bn else ''}")
            epochs = np.arange(1, len(r.losses) + 1)
            row[0].plot(epochs, r.losses, **style)
            row[1].plot(np.cumsum(r.epoch_seconds), r.losses, **style)
        ylabel = "training loss (cross-entropy)" if TASKS[tname].loss == "cross_entropy" else "training loss (BCE)"
        for ax, xlabel in zip(row, ("epoch", "wall time (s)")):
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_title(TASKS[tname].title, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        row[1].set_xscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.savefig(path)


# ---------------------------------------------------------------------------------- CLI
def _choice_list(choices: Sequence[str], what: str) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what} "
                                             f"({', '.join(choices)})")
        for t in items:
            if t not in choices:
                raise argparse.ArgumentTypeError(f"unknown {what[:-1]} {t!r} (choose from "
                                                 f"{', '.join(choices)})")
        return list(dict.fromkeys(items))
    return parse


_positive_float = V.text_arg(V.positive_float, "a positive number")


class _DefaultEpochs(int):
    """The default of --epochs, told apart from an explicit value (--quick runs 1 epoch)."""


def _int_list(text: str) -> List[int]:
    try:
        items = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        items = []
    if not items or any(v < 0 for v in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of seeds >= 0, got {text!r}")
    return list(dict.fromkeys(items))


TASK_CHOICES = (*TASKS, "curves")


def _all_schedules() -> Tuple[str, ...]:
    from .compare_curves import SCHEDULES as CURVES_SCHEDULES
    return tuple(dict.fromkeys((*SCHEDULES, *CURVES_SCHEDULES)))


def add_parser(subparsers: Any) -> None:
    """Register `layerprop compare` on the CLI's subparsers."""
    from . import compare_curves as C
    s = subparsers.add_parser(
        "compare", help="train one network under every update schedule, with and without BatchNorm",
        description="Train a digits classifier (64-128-128-10 ReLU) and a deep digits autoencoder "
                    "(64-256-128-64-16-64-128-256-64 tanh, BCE) under Simultaneous, Layerwise "
                    "top_down and bottom_up, and LocoProp S and M updates, with and without "
                    "BatchNorm (Adam lr=1e-3, batch 32, fixed seeds). Print one table (training "
                    "loss, test metric, time per epoch, node operations per step, moving-target "
                    "cosine and input drift) and write a loss-curve plot. "
                    "--task curves instead trains the LocoProp paper's deep autoencoder "
                    "(784-1000-500-250-30-250-500-1000-784 tanh, BCE, batch 1000) on CURVES-style "
                    "images: SGD-momentum, Adam and RMSprop with learning rates tuned by a sweep, "
                    "LocoProp S and M (K=10, gamma=10 in the paper's units, RMSprop) and Layerwise, "
                    "over several seeds; training loss against epochs and wall time, and ms per step.")
    s.add_argument("--epochs", type=int, default=_DefaultEpochs(DEFAULT_EPOCHS),
                   help=f"training epochs per run (default {DEFAULT_EPOCHS}, curves {C.FULL.epochs}; "
                        f"1 with --quick)")
    s.add_argument("--tasks", "--task", type=_choice_list(TASK_CHOICES, "tasks"), default=list(TASKS),
                   metavar="TASK[,TASK]", help=f"which tasks: {', '.join(TASK_CHOICES)} (default: "
                                               f"{','.join(TASKS)})")
    s.add_argument("--schedules", type=_choice_list(_all_schedules(), "schedules"), default=None,
                   metavar="S[,S...]", help=f"which schedules (default all of a task's: digits and "
                                            f"autoencoder {','.join(SCHEDULES)}; curves {','.join(C.SCHEDULES)})")
    bn = s.add_mutually_exclusive_group()
    bn.add_argument("--no-bn", action="store_true", help="only the networks without BatchNorm")
    bn.add_argument("--bn-only", action="store_true", help="only the networks with BatchNorm")
    s.add_argument("--quick", action="store_true",
                   help=f"a tiny run for CI: {QUICK_ROWS} training rows, 1 epoch unless --epochs "
                        f"(curves: {C.QUICK.rows} images, batch {C.QUICK.batch}, the network "
                        f"{'-'.join(map(str, C.QUICK_SIZES))}, seed 0, 1 sweep epoch)")
    s.add_argument("--markdown", action="store_true", help="print a Markdown table")
    s.add_argument("--plot", default="compare.png", metavar="PATH",
                   help="loss-curve PNG to write (default compare.png; needs matplotlib; with both "
                        "kinds of task the curves plot goes to PATH's stem + _curves.png)")
    s.add_argument("--no-plot", action="store_true", help="write no plot")
    s.add_argument("--probe-lr", type=_positive_float, default=0.1, metavar="LR",
                   help="step of the moving-target probe (plain gradient step, default 0.1)")
    s.add_argument("--seed", type=int, default=0,
                   help="initialization and shuffling seed of digits and autoencoder (default 0)")
    s.add_argument("--seeds", type=_int_list, default=None, metavar="S[,S...]",
                   help=f"curves: the seeds (default {','.join(map(str, C.FULL.seeds))}; --quick 0); "
                        f"the sweep uses the first")
    s.add_argument("--rows", type=int, default=None, metavar="N",
                   help=f"curves: training images (default {C.FULL.rows}; --quick {C.QUICK.rows}); "
                        f"{C.N_TEST} more are held out ({C.QUICK.n_test} with --quick)")
    s.add_argument("--long-epochs", type=int, default=None, metavar="N",
                   help="curves: epochs of the first-order baselines, for the equal-time comparison "
                        "(default 4 x --epochs)")
    s.add_argument("--sweep-epochs", type=int, default=None, metavar="N",
                   help=f"curves: epochs per learning rate of the sweep (default {C.FULL.sweep_epochs}; "
                        f"--quick {C.QUICK.sweep_epochs})")
    s.add_argument("--json", default=None, metavar="PATH",
                   help="curves: also write every figure of the run (sweep, per-epoch losses and "
                        "times per run) to PATH as JSON")
    s.add_argument("--threads", type=int, default=0, help="threads for the core (default: all cores)")
    s.set_defaults(func=_cmd_compare)


def _curves_budget(args: argparse.Namespace, epochs: Optional[int]):
    """The curves Budget from the options, or an error message."""
    from dataclasses import replace
    from . import compare_curves as C
    b = C.QUICK if args.quick else C.FULL
    if epochs is not None:
        b = replace(b, epochs=epochs)
    for name in ("rows", "long_epochs", "sweep_epochs"):
        v = getattr(args, name)
        if v is not None and v < 1:
            return f"--{name.replace('_', '-')}: expected a positive number"
    rows = args.rows if args.rows is not None else b.rows
    long_epochs = args.long_epochs if args.long_epochs is not None else 4 * b.epochs
    if long_epochs < b.epochs:
        return f"--long-epochs: expected at least --epochs ({b.epochs}), got {long_epochs}"
    return replace(b, rows=rows, long_epochs=long_epochs,
                   sweep_epochs=args.sweep_epochs if args.sweep_epochs is not None else b.sweep_epochs,
                   seeds=tuple(args.seeds) if args.seeds is not None else b.seeds)


def _curves_plot_path(path: str, both: bool) -> str:
    if not both:
        return path
    stem, dot, ext = path.rpartition(".")
    return f"{stem}_curves.{ext}" if dot else f"{path}_curves.png"


def _cmd_compare(args: argparse.Namespace) -> int:
    import layerprop as lp
    from . import compare_curves as C
    prog = "layerprop compare"

    def fail(msg: str) -> int:
        print(f"{prog}: error: {msg} (see --help)", file=sys.stderr)
        return 2

    explicit_epochs = None if isinstance(args.epochs, _DefaultEpochs) else args.epochs
    if explicit_epochs is not None and explicit_epochs < 1:
        return fail("--epochs: expected a positive number")
    args.epochs = explicit_epochs or (1 if args.quick else DEFAULT_EPOCHS)
    if args.threads < 0:
        return fail("--threads: expected a number >= 0")
    classic = [t for t in args.tasks if t in TASKS]
    curves = "curves" in args.tasks
    chosen = args.schedules
    classic_schedules = list(SCHEDULES) if chosen is None else [s for s in chosen if s in SCHEDULES]
    curves_schedules = list(C.SCHEDULES) if chosen is None else [s for s in chosen if s in C.SCHEDULES]
    if classic and not classic_schedules:
        return fail(f"--schedules: none applies to {' and '.join(classic)} (choose from {', '.join(SCHEDULES)})")
    if curves and not curves_schedules:
        return fail(f"--schedules: none applies to curves (choose from {', '.join(C.SCHEDULES)})")
    budget = None
    if curves:
        budget = _curves_budget(args, explicit_epochs)
        if isinstance(budget, str):
            return fail(budget)
    elif any(getattr(args, n) is not None for n in ("seeds", "rows", "long_epochs", "sweep_epochs", "json")):
        return fail("--seeds, --rows, --long-epochs, --sweep-epochs and --json apply to --task curves only")
    if args.threads:
        lp.set_num_threads(args.threads)
    bn_modes = (False,) if args.no_bn else (True,) if args.bn_only else (False, True)

    def progress(msg: str) -> None:
        print(f"{prog}: training {msg} ...", file=sys.stderr, flush=True)

    def write_plot(fn: Callable[[Any, str], None], report: Any, path: str) -> None:
        try:
            fn(report, path)
        except ImportError:
            print(f"{prog}: matplotlib is not installed, so no plot was written "
                  f"(pip install 'layerprop[plot]')", file=sys.stderr)
        else:
            print(f"loss curves written to {path}")

    if classic:
        try:
            report = run(classic, classic_schedules, bn_modes, args.epochs, quick=args.quick,
                         seed=args.seed, probe_lr=args.probe_lr, progress=progress)
        except ImportError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        print(format_table(report, markdown=args.markdown))
        if not args.no_plot:
            write_plot(plot, report, args.plot)
    if curves:
        creport = C.run_curves(curves_schedules, bn_modes, budget, quick=args.quick,  # type: ignore[arg-type]
                               progress=progress)
        if classic:
            print()
        print(C.format_curves(creport, markdown=args.markdown))
        if args.json:
            with open(args.json, "w") as f:
                f.write(creport.to_json() + "\n")
            print(f"figures written to {args.json}")
        if not args.no_plot:
            write_plot(C.plot_curves, creport, _curves_plot_path(args.plot, bool(classic)))
    return 0
