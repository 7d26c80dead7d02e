"""`layerprop train`: train an MLP on a CSV file, an .npz file or a built-in dataset, print
its metrics and write it as a .safetensors model (lp.load reads it back)."""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Any, List, Optional, Tuple

import numpy as np

from . import validation as V
from .layers import ACTIVATION_LAYERS

BUILTIN = ("digits",)
ACTIVATIONS = tuple(ACTIVATION_LAYERS)
OPTIMIZERS = ("adam", "adamw", "sgd")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- argument types
def _hidden(text: str) -> List[int]:
    if text.strip() in ("", "0", "none"):
        return []
    try:
        sizes = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints such as 128,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


_positive_float = V.text_arg(V.positive_float, "a number > 0")
_nonneg_float = V.text_arg(V.nonneg_float, "a number >= 0")
_fraction = V.text_arg(lambda v, n: V.real(v, n, 0.0, 1.0, hi_open=True), "a fraction in [0, 1)")
_positive_int = V.text_arg(V.positive_int, "a positive int", int)


def add_parser(subparsers: Any) -> None:
    """Register `layerprop train` on the CLI's subparsers."""
    s = subparsers.add_parser(
        "train", help="train an MLP on a CSV/.npz file or a built-in dataset and save it",
        description="Train a multi-layer perceptron on DATA and write it as a .safetensors model "
                    "(read it back with lp.load). DATA is a .csv file (numeric feature columns, "
                    "optional header row; the target is the last column unless --target says "
                    "otherwise), an .npz file (arrays X and y, see --x-key/--y-key) or the name of "
                    f"a built-in dataset ({', '.join(BUILTIN)}: scikit-learn's 8x8 digits, pixels "
                    "scaled to [0, 1]). Metrics are printed per epoch and at the end.")
    s.add_argument("data", metavar="DATA", help="path to a .csv or .npz file, or a built-in dataset name")
    s.add_argument("--target", default=None, metavar="COLUMN",
                   help="CSV target column: a header name or a 0-based index (default: the last column)")
    s.add_argument("--x-key", default="X", help="array of features in an .npz file (default X)")
    s.add_argument("--y-key", default="y", help="array of targets in an .npz file (default y)")
    s.add_argument("--task", choices=("auto", "classification", "regression"), default="auto",
                   help="auto (default): classification when the target is text or integers with at "
                        "most 100 distinct values, regression otherwise")
    s.add_argument("--hidden", type=_hidden, default=[128], metavar="N[,N...]",
                   help="hidden layer sizes, comma-separated (default 128; 0 for none)")
    s.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="hidden activation (default relu)")
    s.add_argument("--dropout", type=_fraction, default=0.0, metavar="P",
                   help="dropout probability after each hidden activation (default 0: none)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer (default adam)")
    s.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (default 0.001)")
    s.add_argument("--momentum", type=_nonneg_float, default=0.0, help="SGD momentum (default 0)")
    s.add_argument("--weight-decay", type=_nonneg_float, default=0.0, help="weight decay (default 0)")
    s.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    s.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default 32)")
    s.add_argument("--val-split", type=_fraction, default=0.2, metavar="F",
                   help="fraction of the rows held out for validation (default 0.2; 0: none)")
    s.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="model dtype (default float32)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split, initialization and shuffling (default 0)")
    s.add_argument("--threads", type=int, default=0, help="threads for the core (default: all cores)")
    s.add_argument("--output", "-o", default="model.safetensors", metavar="PATH",
                   help="where to write the trained model (default model.safetensors)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: only on a terminal)")
    s.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------- data
def _load_csv(path: str, target: Optional[str]) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise CliError(f"{path}: not a text CSV file") from None
    except csv.Error as e:
        raise CliError(f"{path}: unreadable CSV ({e})") from None
    if not rows:
        raise CliError(f"{path}: no rows")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False
    header = None if all(numeric(c) for c in rows[0]) else [c.strip() for c in rows[0]]
    body = rows[1:] if header is not None else rows
    if not body:
        raise CliError(f"{path}: a header but no data rows")
    width = len(body[0])
    for i, r in enumerate(body):
        if len(r) != width:
            line = i + (2 if header is not None else 1)
            raise CliError(f"{path}: line {line} has {len(r)} columns, expected {width}")
    if width < 2:
        raise CliError(f"{path}: needs at least one feature column and a target column")
    if header is not None and len(header) != width:
        raise CliError(f"{path}: the header has {len(header)} columns, the data rows {width}")
    names = header if header is not None else [str(i) for i in range(width)]
    if target is None:
        t = width - 1
    elif header is not None and target in header:
        t = header.index(target)
    else:
        try:
            t = int(target)
        except ValueError:
            raise CliError(f"--target: no column {target!r} in {path}"
                           + (f" (columns: {', '.join(header)})" if header else "")) from None
        if not -width <= t < width:
            raise CliError(f"--target: column index {t} out of range for {width} columns")
        t %= width
    feats = [j for j in range(width) if j != t]
    X = np.empty((len(body), len(feats)), dtype=np.float64)
    for i, r in enumerate(body):
        for k, j in enumerate(feats):
            try:
                X[i, k] = float(r[j])
            except ValueError:
                line = i + (2 if header is not None else 1)
                raise CliError(f"{path}: line {line}, column {names[j]!r}: not a number: {r[j]!r}") from None
    y = np.array([r[t].strip() for r in body], dtype=object)
    return X, y, [names[j] for j in feats]


def _load_npz(path: str, x_key: str, y_key: str) -> Tuple[np.ndarray, np.ndarray]:
    import zipfile
    if not zipfile.is_zipfile(path):
        raise CliError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # closed even if np.load fails
            for key, opt in ((x_key, "--x-key"), (y_key, "--y-key")):
                if key not in z.files:
                    raise CliError(f"{opt}: no array {key!r} in {path} (it has {', '.join(z.files) or 'none'})")
            X, y = z[x_key], z[y_key]
            for key, arr in ((x_key, X), (y_key, y)):
                if not isinstance(arr, np.ndarray):  # a member that is not an .npy file
                    raise CliError(f"{path}: {key!r} is not a NumPy array (.npy) member")
    except CliError:
        raise
    except ValueError as e:  # object arrays need pickle: refused
        msg = "an array of Python objects (needs pickle, refused)" if "pickle" in str(e) else str(e).splitlines()[0]
        raise CliError(f"{path}: unreadable .npz ({msg})") from None
    except (OSError, EOFError) as e:
        raise CliError(f"{path}: not a readable .npz file ({e})") from None
    except Exception as e:  # zipfile.BadZipFile and other corruptions
        raise CliError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if X.ndim != 2:
        raise CliError(f"{path}: {x_key} must be 2-D (samples, features), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise CliError(f"{path}: {x_key} must be numeric, got dtype {X.dtype}")
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise CliError(f"{path}: {y_key} must have {X.shape[0]} rows like {x_key}, got shape {y.shape}")
    return X.astype(np.float64), y


def _load(args: argparse.Namespace) -> Tuple[np.ndarray, np.ndarray]:
    data = args.data
    if data in BUILTIN and not os.path.exists(data):
        from .datasets import load_digits
        digits = load_digits()
        if digits is None:
            raise CliError("digits: the built-in dataset needs scikit-learn: pip install 'layerprop[sklearn]'")
        return digits
    if not os.path.exists(data):
        raise CliError(f"{data}: no such file (and not a built-in dataset: {', '.join(BUILTIN)})")
    if os.path.isdir(data):
        raise CliError(f"{data}: is a directory")
    ext = os.path.splitext(data)[1].lower()
    try:
        if ext == ".npz":
            return _load_npz(data, args.x_key, args.y_key)
        if ext in (".csv", ".txt", ".tsv"):
            X, y, _names = _load_csv(data, args.target)
            return X, y
    except PermissionError:
        raise CliError(f"{data}: permission denied") from None
    raise CliError(f"{data}: unknown file type {ext or '(none)'!r}; expected .csv or .npz")


def _is_classification(y: np.ndarray, task: str) -> bool:
    if task != "auto":
        return task == "classification"
    if y.ndim == 2 and y.shape[1] > 1:
        return False
    flat = y.reshape(-1)
    if flat.dtype == object:
        try:
            vals = flat.astype(np.float64)
        except ValueError:
            return True  # text labels
    elif np.issubdtype(flat.dtype, np.number) or flat.dtype == np.bool_:
        vals = flat.astype(np.float64)
    else:
        return True
    return bool(np.all(vals == np.round(vals)) and len(np.unique(vals)) <= 100)


def _targets(y: np.ndarray, classify: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(encoded targets, class labels or None)."""
    if classify:
        if y.ndim == 2:
            if y.shape[1] != 1:
                raise CliError("--task classification: needs one target column")
            y = y[:, 0]
        flat = y
        if flat.dtype == object:
            try:  # numeric text ("1", "2.0") is sorted by value
                num = flat.astype(np.float64)
                if np.isfinite(num).all() and np.all(num == np.round(num)):
                    flat = num.astype(np.int64)
            except ValueError:
                flat = flat.astype(str)
        classes, enc = np.unique(flat, return_inverse=True)
        if len(classes) < 2:
            raise CliError(f"target: classification needs at least 2 classes, got {len(classes)}")
        return enc.astype(np.int64), classes
    try:
        t = np.asarray(y, dtype=np.float64)
    except (ValueError, TypeError):
        raise CliError("target: regression needs numeric targets (use --task classification for labels)") from None
    if not np.all(np.isfinite(t)):
        raise CliError("target: contains NaN or Inf")
    return (t.reshape(-1, 1) if t.ndim == 1 else t), None


# ----------------------------------------------------------------------------- the command
def cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except CliError as e:
        print(f"layerprop train: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"layerprop train: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"layerprop train: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    import layerprop as lp
    from . import io as lpio
    if args.threads:
        lp.set_num_threads(args.threads)
    if args.optimizer != "sgd" and args.momentum:
        raise CliError("--momentum: only applies to --optimizer sgd")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CliError(f"--output: folder {out_dir!r} does not exist")
    try:
        import safetensors  # noqa: F401  (fail before training, not after)
    except ImportError:
        raise CliError("--output: writing a model needs safetensors: pip install 'layerprop[io]'") from None

    X, y = _load(args)
    if len(X) < 2:
        raise CliError(f"{args.data}: needs at least 2 rows, got {len(X)}")
    if not np.all(np.isfinite(X)):
        raise CliError(f"{args.data}: the features contain NaN or Inf")
    classify = _is_classification(y, args.task)
    target, classes = _targets(y, classify)

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    n_val = int(round(len(X) * args.val_split))
    if args.val_split > 0 and (n_val < 1 or n_val >= len(X)):
        raise CliError(f"--val-split: {args.val_split} of {len(X)} rows leaves no training or no validation rows")
    val_idx, tr_idx = order[:n_val], order[n_val:]
    dtype = np.float32 if args.dtype == "float32" else np.float64
    X = X.astype(dtype)
    if not classify:
        target = target.astype(dtype)
    Xtr, ytr = X[tr_idx], target[tr_idx]
    val = (X[val_idx], target[val_idx]) if n_val else None

    n_out = len(classes) if classes is not None else target.shape[1]
    acts = ACTIVATION_LAYERS
    sizes = [X.shape[1], *args.hidden, n_out]
    layers: List[Any] = []
    for i in range(len(sizes) - 1):
        layers.append(lp.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(acts[args.activation]())
            if args.dropout:
                layers.append(lp.Dropout(args.dropout))
    model = lp.Sequential(*layers, dtype=args.dtype, seed=args.seed)
    if args.optimizer == "sgd":
        opt: Any = lp.SGD(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    elif args.optimizer == "adamw":
        opt = lp.AdamW(lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = lp.Adam(lr=args.lr, weight_decay=args.weight_decay)
    loss = "cross_entropy" if classify else "mse"
    model.compile(loss=loss, optimizer=opt)

    task = "classification" if classify else "regression"
    print(f"Data: {args.data}: {len(X)} rows, {X.shape[1]} features, {task}"
          + (f" ({len(classes)} classes)" if classes is not None else f" ({n_out} target(s))")
          + f"; {len(Xtr)} for training, {n_val} for validation.")
    print(model.summary())

    def report(epoch: int, logs: dict) -> None:
        parts = [f"{k} {v:.4f}" for k, v in logs.items()]
        print(f"epoch {epoch + 1:3d}/{args.epochs}  " + "  ".join(parts), flush=True)
    t0 = time.perf_counter()
    model.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, validation_data=val,
              callbacks=[lp.LambdaCallback(on_epoch_end=report)], progress=args.progress)
    secs = time.perf_counter() - t0
    print(f"Trained {args.epochs} epochs in {secs:.2f} s ({len(Xtr) * args.epochs / max(secs, 1e-9):,.0f} samples/s).")
    final = {"train": model.evaluate(Xtr, ytr)}
    if val is not None:
        final["validation"] = model.evaluate(*val)
    for split, res in final.items():
        print(f"{split:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in res.items()))
    labels = None if classes is None else [str(c) if not isinstance(c, (int, np.integer)) else int(c) for c in classes]
    lpio.save(model, args.output, include_optimizer=True,
              extra_metadata={"layerprop.cli": json.dumps({"task": task, "classes": labels})})
    print(f"Saved to {args.output} (lp.load reads it back"
          + ("; output i is class classes[i], listed in its metadata" if labels else "") + ").")
    return 0
