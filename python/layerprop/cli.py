"""The `layerprop` command line (also `python -m layerprop`)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import numpy as np


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr ("layerprop train: error: ..."), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cmd_info(args: argparse.Namespace) -> int:
    import layerprop as lp
    info = lp.build_info()
    for k, v in info.items():
        print(f"{k:12s} {v}")
    from . import threads
    cur = threads.thresholds()
    src = "calibrated" if cur != threads.defaults() else "built-in"
    print(f"{'thresholds':12s} {src}: " + ", ".join(f"{k}={'never' if v is None else v}" for k, v in cur.items()))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    import layerprop as lp
    from . import threads
    if args.threads:
        lp.set_num_threads(args.threads)
    if lp.get_num_threads() < 2:
        print("layerprop calibrate: running on 1 thread, so there is nothing to calibrate "
              "(use --threads N or lp.set_num_threads)", file=sys.stderr)
        return 2
    before = threads.thresholds()

    def show(kind: str, r: dict) -> None:
        if args.json:
            return
        gains = "  ".join(f"{u:,}:{s / p:.2f}x" for u, s, p in zip(r["units"], r["serial_s"], r["pooled_s"]))
        found = "never" if r["units_per_thread"] is None else f"{r['units_per_thread']:,}"
        print(f"{kind:15s} {found:>12s}   (units: pool speed-up) {gains}", flush=True)

    if not args.json:
        print(f"Calibrating {lp.get_num_threads()} threads, margin {args.margin}x, "
              f"{args.budget:g} s per measurement. Units per thread by kind of work:")
    kinds = None if args.kinds is None else [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds or [] if k not in threads.KINDS]
    if bad or kinds == []:
        print(f"layerprop calibrate: error: --kinds: expected some of {','.join(threads.KINDS)}, got {args.kinds!r}",
              file=sys.stderr)
        return 2
    res = threads.calibrate(kinds, budget=args.budget, margin=args.margin, apply=True, save=args.save,
                            path=args.path, progress=show)
    if args.json:
        print(json.dumps({"before": before, **res}, indent=2))
        return 0
    if args.save:
        print(f"\nSaved to {args.path or threads.config_path()}; `import layerprop` applies it from now on.")
    else:
        print("\nApplied to this process only; --save keeps it for later imports.")
    return 0


def _ascii_digit(pixels: np.ndarray) -> List[str]:
    shades = " .:-=+*#%@"
    img = pixels.reshape(8, 8)
    return ["".join(shades[min(9, int(v * 9.999))] * 2 for v in row) for row in img]


def _cmd_demo(args: argparse.Namespace) -> int:
    import layerprop as lp
    if args.threads:
        lp.set_num_threads(args.threads)
    from .datasets import digits_split
    split = digits_split(0)
    if split is None:
        print("layerprop demo: needs scikit-learn for its digits data: pip install 'layerprop[sklearn]'",
              file=sys.stderr)
        return 2
    Xtr, Xte, ytr, yte = split
    info = lp.build_info()
    simd = info["simd"] + (", AVX-512 GEMM" if info.get("gemm_avx512") else "")
    print(f"layerprop {lp.__version__} ({simd}, {lp.get_num_threads()} threads)")
    print(f"Digits: {len(Xtr)} training and {len(Xte)} test images of 8x8 pixels, 10 classes.\n")
    model = lp.Sequential(lp.Linear(64, 128), lp.ReLU(), lp.Linear(128, 10), seed=args.seed)
    model.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3))
    print(model.summary(), "\n")
    t0 = time.perf_counter()
    hist = model.fit(Xtr, ytr, epochs=args.epochs, batch_size=32, validation_data=(Xte, yte),
                     progress=False)
    secs = time.perf_counter() - t0
    for e in sorted({0, args.epochs // 4, args.epochs // 2, args.epochs - 1}):
        if 0 <= e < args.epochs:
            h = hist.history
            print(f"epoch {e + 1:3d}  loss {h['loss'][e]:.4f}  val_loss {h['val_loss'][e]:.4f}  "
                  f"val_accuracy {h['val_accuracy'][e]:.4f}")
    res = model.evaluate(Xte, yte)
    print(f"\nTrained {args.epochs} epochs in {secs:.2f} s ({secs / max(args.epochs, 1) * 1e3:.2f} ms/epoch).")
    print(f"Test accuracy: {res['accuracy'] * 100:.2f}%  (test loss {res['loss']:.4f})\n")
    pred = model.predict(Xte).argmax(axis=1)
    conf = np.zeros((10, 10), dtype=int)
    np.add.at(conf, (yte, pred), 1)
    print("Confusion matrix (rows: true digit, columns: predicted):")
    print("     " + " ".join(f"{j:3d}" for j in range(10)))
    for i in range(10):
        print(f"  {i}: " + " ".join(f"{c:3d}" for c in conf[i]))
    wrong = np.flatnonzero(pred != yte)[:3]
    if len(wrong):
        print("\nSome images it gets wrong:")
        pics = [_ascii_digit(Xte[i]) for i in wrong]
        print("   ".join(f"true {yte[i]} -> said {pred[i]}".ljust(16) for i in wrong))
        for r in range(8):
            print("   ".join(p[r] for p in pics))
    return 0


def _explain_network(seed: int):
    """The tiny float64 network of `layerprop explain`: a residual block whose Linear is used
    twice (so one weight reaches the loss along several paths), MSE loss, 4 examples."""
    import layerprop as lp
    x = lp.Input(2, name="x")
    shared = lp.Linear(2, 2, name="shared")
    h = lp.Tanh()(shared(x))
    s = lp.add(x, h)                               # skip connection: x + tanh(shared(x))
    out = lp.Linear(2, 1, name="head")(lp.Tanh()(shared(s)))   # shared used a second time
    model = lp.Model(inputs=x, outputs=out, dtype="float64", seed=seed)
    model.compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((4, 2))
    y = rng.standard_normal((4, 1))
    return model, X, y


def _cmd_explain(args: argparse.Namespace) -> int:
    import layerprop as lp
    model, X, y = _explain_network(args.seed)
    print("Network (float64, MSE, 4 examples, SGD lr=0.1):")
    print("  h = tanh(shared(x)); s = x + h; out = head(tanh(shared(s)))   "
          "# `shared` is one Linear(2, 2) used twice\n")
    for report in (lp.explain.gradcheck(model, X, y),
                   lp.explain.path_gradients(model, X, y, "shared.weight", (0, 1)),
                   lp.explain.taylor_check(model, X, y)):
        print(report)
        print()
    print(lp.explain.moving_target(model, X, y))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="layerprop", description="Fast, transparent neural-network training on the CPU.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("info", help="what this build runs: SIMD, OpenMP, threads, compiler",
                       description="Print the build: version, SIMD kernels in use, OpenMP, threads, compiler, CPU features.")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("demo", help="train a digit classifier in seconds and show what it learned",
                       description="Train a 64-128-10 ReLU network with Adam on scikit-learn's 8x8 digits "
                                   "and report accuracy, a confusion matrix and some mistakes.")
    s.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    s.add_argument("--seed", type=int, default=0, help="initialization and shuffling seed (default 0)")
    s.add_argument("--threads", type=int, default=0, help="threads for the core (default: all cores)")
    s.set_defaults(func=_cmd_demo)
    s = sub.add_parser("explain", help="show why backprop is right on a tiny residual network",
                       description="Run lp.explain's gradcheck, path_gradients, taylor_check and "
                                   "moving_target on a tiny float64 residual network with a shared "
                                   "weight, and print their reports.")
    s.add_argument("--seed", type=int, default=0, help="initialization and data seed (default 0)")
    s.set_defaults(func=_cmd_explain)
    s = sub.add_parser("calibrate", help="measure where threads start to pay on this machine",
                       description="Time each kind of parallel loop serially and on the thread pool at "
                                   "growing sizes, and set the thresholds from which threads are used "
                                   "(docs/threads.md). Run it on a quiet machine.")
    s.add_argument("--threads", type=int, default=0, help="threads to calibrate for (default: all cores)")
    s.add_argument("--budget", type=float, default=0.05, help="seconds per measurement (default 0.05)")
    s.add_argument("--margin", type=float, default=1.3,
                   help="speed-up the pool must show at two sizes in a row (default 1.3)")
    s.add_argument("--kinds", default=None, metavar="KIND[,KIND]",
                   help="only these kinds of work (default all; see lp.threads.KINDS)")
    s.add_argument("--save", action="store_true", help="keep the result for later imports of layerprop")
    s.add_argument("--path", default=None, help="file to save to (default: lp.threads.config_path())")
    s.add_argument("--json", action="store_true", help="print the measurements as JSON")
    s.set_defaults(func=_cmd_calibrate)
    from .bench import add_parser as add_bench_parser
    add_bench_parser(sub)
    from .cli_train import add_parser as add_train_parser
    add_train_parser(sub)
    from .compare import add_parser as add_compare_parser
    add_compare_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "epochs", 1) < 1:
        parser.error("--epochs: expected a positive number")
    if getattr(args, "threads", 0) < 0:
        parser.error("--threads: expected a number >= 0")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
