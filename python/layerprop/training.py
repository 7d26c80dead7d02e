"""The training loop around the core: batches, shuffling, validation, History, callbacks."""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from . import validation as V
from .layers import BatchNorm1d

__all__ = ["History", "Callback", "LambdaCallback", "EarlyStopping", "ModelCheckpoint", "MovingTarget",
           "run_fit", "validated_data"]


class Callback:
    """Base class: override any hook. `model.stop_training = True` ends fit after the epoch."""

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: Optional[dict] = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None: ...
    def on_train_end(self, logs: Optional[dict] = None) -> None: ...


class History(Callback):
    """Per-epoch metrics of a fit: `history["loss"]`, `["val_loss"]`, `["val_accuracy"]`;
    `epoch` lists the epoch indices (from `initial_epoch` on)."""

    def __init__(self) -> None:
        self.history: Dict[str, List[float]] = {}
        self.epoch: List[int] = []

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

    def plot(self, keys: Optional[Sequence[str]] = None, ax: Any = None) -> Any:
        """Plot the metrics per epoch with matplotlib (the `plot` extra) and return the Axes.
        Losses share the left axis; accuracies, if any, get a right axis in [0, 1]."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install 'layerprop[plot]'") from None
        if keys is None:
            keys = list(self.history)
        elif isinstance(keys, str):
            keys = [keys]
        unknown = [k for k in keys if k not in self.history]
        if unknown:
            raise ValueError(f"keys: no metric {unknown[0]!r} in this history (it has {sorted(self.history)})")
        if not keys:
            raise ValueError("keys: this history has no metrics to plot (no epoch ran)")
        if ax is None:
            _fig, ax = plt.subplots()
        epochs = [e + 1 for e in self.epoch]
        acc = [k for k in keys if "acc" in k]
        other = [k for k in keys if k not in acc]
        for k in other:
            ax.plot(epochs, self.history[k], marker=".", label=k)
        ax.set_xlabel("epoch")
        if other:
            ax.set_ylabel("loss")
        lines, labels = ax.get_legend_handles_labels()
        if acc:
            ax2 = ax.twinx() if other else ax
            for k in acc:
                ax2.plot(epochs, self.history[k], marker=".", linestyle="--", label=k)
            ax2.set_ylabel("accuracy")
            ax2.set_ylim(0.0, 1.0)
            if ax2 is not ax:
                l2, lab2 = ax2.get_legend_handles_labels()
                lines, labels = lines + l2, labels + lab2
            else:
                lines, labels = ax.get_legend_handles_labels()
        ax.legend(lines, labels)
        return ax

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}[{len(v)}]" for k, v in self.history.items())
        return f"History({keys})"


class LambdaCallback(Callback):
    """A callback from plain functions: on_epoch_begin(epoch, logs), on_epoch_end(epoch, logs),
    on_train_begin(logs), on_train_end(logs); any may be None."""

    def __init__(self, on_epoch_begin: Optional[Callable[[int, dict], Any]] = None,
                 on_epoch_end: Optional[Callable[[int, dict], Any]] = None,
                 on_train_begin: Optional[Callable[[dict], Any]] = None,
                 on_train_end: Optional[Callable[[dict], Any]] = None) -> None:
        for name, fn in (("on_epoch_begin", on_epoch_begin), ("on_epoch_end", on_epoch_end),
                         ("on_train_begin", on_train_begin), ("on_train_end", on_train_end)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name}: expected a callable or None, got {type(fn).__name__}")
        self._fns: Dict[str, Any] = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                         on_train_begin=on_train_begin, on_train_end=on_train_end)

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        if self._fns["on_train_begin"]:
            self._fns["on_train_begin"](logs or {})

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._fns["on_epoch_begin"]:
            self._fns["on_epoch_begin"](epoch, logs or {})

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._fns["on_epoch_end"]:
            self._fns["on_epoch_end"](epoch, logs or {})

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self._fns["on_train_end"]:
            self._fns["on_train_end"](logs or {})


def _mode(mode: str, monitor: str) -> str:
    V.choice(mode, "mode", ("auto", "min", "max"))
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


class _Monitor(Callback):
    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor: expected a metric name such as 'val_loss', got {monitor!r}")
        self.monitor = monitor
        self.mode = _mode(mode, monitor)
        self.min_delta = V.nonneg_float(min_delta, "min_delta", "a number >= 0")
        self.best = math.inf if self.mode == "min" else -math.inf

    def _value(self, logs: Optional[dict]) -> float:
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(f"monitor: {type(self).__name__} watches {self.monitor!r}, but fit reports "
                             f"only {sorted(logs)} (pass validation_data for val_* metrics)")
        return float(logs[self.monitor])

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop fit when `monitor` has not improved by more than `min_delta` for `patience`
    epochs. With restore_best_weights=True, the parameters of the best epoch are put back when
    training ends (whether it stopped early or ran out of epochs). mode "auto": maximize
    metrics with "acc" in their name, minimize the others."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = V.integer(patience, "patience", 0)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.best_epoch: Optional[int] = None
        self.stopped_epoch: Optional[int] = None
        self.best_weights: Optional[Dict[str, np.ndarray]] = None
        self._last_epoch: Optional[int] = None

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.wait = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = self.stopped_epoch = self._last_epoch = None
        self.best_weights = None

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        value = self._value(logs)
        self._last_epoch = epoch
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.copy() for k, v in self.model.parameters().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self.restore_best_weights and self.best_weights is not None and self.best_epoch != self._last_epoch:
            for k, v in self.model.parameters().items():
                v[...] = self.best_weights[k]


class ModelCheckpoint(_Monitor):
    """Save the model every `every` epochs to `path`, a pattern formatted with `epoch`
    (1-based) and the epoch's metrics, e.g. "ckpt-{epoch:03d}-{val_loss:.3f}.safetensors".
    Each write is atomic (temporary file + os.replace). save_best_only=True writes only when
    `monitor` improved. The paths written are in `saved`."""

    def __init__(self, path: str, every: int = 1, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", include_optimizer: bool = True) -> None:
        super().__init__(monitor, mode, 0.0)
        path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise ValueError(f"path: expected a file path (pattern), got {path!r}")
        self.path = path
        self.every = V.integer(every, "every", 1)
        self.save_best_only = bool(save_best_only)
        self.include_optimizer = bool(include_optimizer)
        self.saved: List[str] = []

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if (epoch + 1) % self.every:
            return
        if self.save_best_only:
            value = self._value(logs)
            if not self._improved(value):
                return
            self.best = value
        dist = self.model._distributed()
        if dist is not None and dist.rank != 0:  # data-parallel: rank 0 writes the checkpoints
            return
        try:
            path = self.path.format(epoch=epoch + 1, **(logs or {}))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"path: cannot format {self.path!r} with epoch and {sorted(logs or {})}: {e}") from None
        self.model.save(path, include_optimizer=self.include_optimizer)
        self.saved.append(path)


class MovingTarget(Callback):
    """Measure the moving target during fit: every `every` epochs (at the epoch's end), run
    `lp.explain.moving_target(model, X_probe, y_probe, lr=lr)` on the fixed probe batch and
    record, per parameterized layer, the cosine and norm ratio of its gradient before and after
    the other layers take a plain gradient step, and the drift of its input's mean and variance
    with that step (see lp.explain.moving_target; lr=None: the optimizer's learning rate).

    `history` gets one dict per measurement: {"epoch", "loss" (on the probe), "cosine",
    "norm_ratio", "mean_drift", "var_drift"}, the last four dicts from layer name to value.
    The epoch's logs (and so History) get "mt_cosine_min", "mt_cosine_mean",
    "mt_norm_ratio_min", "mt_mean_drift_max" and "mt_var_drift_max" over the layers; NaN on
    the epochs in between, so every History list has one entry per epoch. The probe runs on a
    float64 twin: the model, its optimizer state and its data stream are not touched."""

    KEYS = ("mt_cosine_min", "mt_cosine_mean", "mt_norm_ratio_min", "mt_mean_drift_max",
            "mt_var_drift_max")

    def __init__(self, X_probe: Any, y_probe: Any, every: int = 1, lr: Optional[float] = None) -> None:
        every = V.integer(every, "every", 1)
        if lr is not None:
            lr = V.positive_float(lr, "lr", "a positive number or None")
        X = np.asarray(X_probe)
        if X.ndim != 2 or X.shape[0] < 1:
            raise ValueError(f"X_probe: expected a 2-D array with at least one row, got shape {X.shape}")
        if len(y_probe) != X.shape[0]:
            raise ValueError(f"y_probe: expected {X.shape[0]} rows to match X_probe, got {len(y_probe)}")
        self.X_probe, self.y_probe = X_probe, y_probe
        self.every = int(every)
        self.lr = lr
        self.history: List[Dict[str, Any]] = []

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.history = []

    def measure(self) -> Dict[str, Any]:
        """One measurement at the model's current parameters (what on_epoch_end records)."""
        from .explain import moving_target
        rep = moving_target(self.model, self.X_probe, self.y_probe, lr=self.lr)
        return {"loss": rep.loss, "cosine": rep.cosine, "norm_ratio": rep.norm_ratio,
                "mean_drift": rep.mean_drift, "var_drift": rep.var_drift}

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if (epoch + 1) % self.every:
            if logs is not None:
                logs.update({k: math.nan for k in self.KEYS})
            return
        rec = {"epoch": epoch, **self.measure()}
        self.history.append(rec)
        if logs is not None:
            cos = list(rec["cosine"].values())
            logs.update(mt_cosine_min=min(cos), mt_cosine_mean=float(np.mean(cos)),
                        mt_norm_ratio_min=min(rec["norm_ratio"].values()),
                        mt_mean_drift_max=max(rec["mean_drift"].values()),
                        mt_var_drift_max=max(rec["var_drift"].values()))


class _Progress:
    """One tqdm bar per epoch on stderr: batches, loss, validation metrics, samples/s."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="batch", leave=True, file=sys.stderr,
                        dynamic_ncols=True)

    def update(self, n: int, loss: float) -> None:
        self.bar.update(n)
        self.bar.set_postfix_str(f"loss={loss:.4f}", refresh=False)

    def close(self, logs: Dict[str, float], samples_per_s: float) -> None:
        parts = [f"{k}={v:.4f}" for k, v in logs.items()]
        parts.append(f"{samples_per_s:,.0f} samples/s")
        self.bar.set_postfix_str(", ".join(parts), refresh=True)
        self.bar.close()


def _show_progress(progress: Optional[bool]) -> bool:
    if progress is None:
        try:
            return bool(sys.stderr.isatty())
        except (AttributeError, ValueError):
            return False
    return bool(progress)


def _progress_bar(show: bool, total: int, desc: str) -> Optional[_Progress]:
    if not show:
        return None
    try:
        return _Progress(total, desc)
    except ImportError:  # tqdm is optional: no bar then
        return None


_ON_NONFINITE = ("raise", "stop", "skip")


def _check_monitors(callbacks: Sequence[Callback], val: Any, loss: Optional[str]) -> None:
    """Refuse, before the first step, a callback that would watch a metric this fit never
    reports (a val_* metric without validation data, val_accuracy without classes)."""
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, _Monitor):
            continue
        if isinstance(cb, ModelCheckpoint) and not cb.save_best_only:
            continue  # writes every `every` epochs; never reads the metric
        reports = ["loss"] + (["val_loss"] + (["val_accuracy"] if loss == "cross_entropy" else [])
                              if val is not None else [])
        if (cb.monitor.startswith("val_") or cb.monitor == "accuracy") and cb.monitor not in reports:
            raise ValueError(f"monitor: {type(cb).__name__} (callbacks[{i}]) watches {cb.monitor!r}, but this fit "
                             f"reports only {reports} (pass validation_data for val_* metrics; accuracy is "
                             "reported for cross_entropy only); nothing was trained")


def validated_data(model: Any, X: Any, y: Any, name: str = "X", sample_weight: Any = None) -> Any:
    """(X, y) converted once (model._prepare) and fully checked by the core (shapes, class labels,
    NaN/Inf) without changing anything: what fit and the explain tools run before their first
    step. With name="validation_data", errors name validation_data."""
    try:
        Xa, ya = model._prepare(X, y)
        if ya.ndim == 0 or ya.shape[0] != Xa.shape[0]:
            raise ValueError(f"y: expected {Xa.shape[0]} rows to match X, got shape {ya.shape}")
        if Xa.shape[0] == 0:
            raise ValueError("X: empty (0 rows); needs at least one sample")
        w = model._prepare_weights(sample_weight, Xa.shape[0])
        model._validate(Xa, ya, w)
    except (TypeError, ValueError) as e:
        if name == "validation_data":
            raise type(e)(f"validation_data: {e}") from None
        raise
    return (Xa, ya) if sample_weight is None else (Xa, ya, w)


def run_fit(model: Any, X: Any, y: Any, *, epochs: int, batch_size: int, shuffle: bool,
            validation_data: Any, callbacks: Sequence[Callback], progress: Optional[bool],
            initial_epoch: int = 0, on_nonfinite: str = "raise", sample_weight: Any = None) -> History:
    from . import NonFiniteError
    model._require_compiled()
    # Every argument is checked before the first step: a refused fit changes nothing.
    epochs = V.integer(epochs, "epochs", 0)
    initial_epoch = V.integer(initial_epoch, "initial_epoch", 0)
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected True, False or None, got {progress!r}")
    V.choice(on_nonfinite, "on_nonfinite", _ON_NONFINITE)
    batch_size = V.positive_int(batch_size, "batch_size")
    w = None
    if sample_weight is None:
        Xa, ya = validated_data(model, X, y)  # converted once for the whole fit
    else:
        Xa, ya, w = validated_data(model, X, y, sample_weight=sample_weight)
    n = Xa.shape[0]
    if (model.training and (min(batch_size, n) == 1 or n % batch_size == 1)
            and any(isinstance(l, BatchNorm1d) for l in model.layers)):
        raise ValueError(f"batch_size: with {n} samples and batch_size={batch_size} a batch has "
                         "1 sample, which BatchNorm1d cannot normalize in training mode; choose another "
                         "batch_size or drop a sample")
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data: expected a tuple (X_val, y_val)")
        val = validated_data(model, validation_data[0], validation_data[1], "validation_data")
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}]: expected an lp Callback, got {type(cb).__name__}")
    _check_monitors(callbacks, val, model.loss)
    history = History()
    # History last (as in Keras): metrics the other callbacks add to an epoch's logs land in it.
    cbs: List[Callback] = [*callbacks, history]
    for cb in cbs:
        cb.set_model(model)
    model.stop_training = False
    for cb in cbs:
        cb.on_train_begin()
    dist = model._distributed()
    if dist is not None and batch_size < dist.size:
        raise ValueError(f"batch_size: {batch_size} is less than the {dist.size} ranks; each rank needs at least "
                         "one row of every batch")
    n_batches = (n + batch_size - 1) // batch_size
    sizes = np.full(n_batches, batch_size, dtype=np.float64)
    sizes[-1] = n - batch_size * (n_batches - 1)
    show = _show_progress(progress) and (dist is None or dist.rank == 0)  # data-parallel: rank 0 shows
    policy = 1 if on_nonfinite == "skip" else 0
    # Chunks of whole batches per call into the core: the GIL is free while a chunk trains,
    # and a progress bar, if any, moves between chunks.
    chunk = max(1, min(n_batches, 16)) if show else n_batches
    for epoch in range(initial_epoch, epochs):
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        t0 = time.perf_counter()
        order = model._shuffled_order(n) if shuffle else np.arange(n, dtype=np.int64)
        order = order.astype(np.int64, copy=False)
        if w is not None:  # the epoch's loss weighs each batch by its total sample weight
            sizes = np.add.reduceat(w[order].astype(np.float64), np.arange(0, n, batch_size))
        bar = _progress_bar(show, n_batches, f"epoch {epoch + 1}/{epochs}")
        losses = np.full(n_batches, np.nan)
        fault = None
        for b0 in range(0, n_batches, chunk):
            b1 = min(n_batches, b0 + chunk)
            out, done, _skipped, fault_batch, kind = model._train_batches(
                Xa, ya, order[b0 * batch_size: b1 * batch_size], batch_size, policy, w)
            losses[b0:b1] = out
            if fault_batch >= 0:
                fault = (b0 + fault_batch, kind, float(out[fault_batch]))
                losses[b0 + fault_batch] = np.nan
                break
            if bar is not None:
                ok = np.isfinite(losses[:b1])
                bar.update(b1 - b0, float(np.dot(losses[:b1][ok], sizes[:b1][ok]) / max(sizes[:b1][ok].sum(), 1)))
        if fault is None and on_nonfinite != "skip":  # every batch was applied: no masking
            logs = {"loss": float(np.dot(losses, sizes) / sizes.sum())}
        else:
            applied = np.isfinite(losses)
            logs = {"loss": float(np.dot(losses[applied], sizes[applied]) / sizes[applied].sum())
                    if applied.any() else math.nan}
            if on_nonfinite == "skip":
                logs["nonfinite_batches"] = float(n_batches - applied.sum())
        if fault is not None:
            b, kind, value = fault
            what = (f"the loss is not finite ({value})" if kind == 1
                    else "a gradient (or a parameter after the update) is not finite")
            msg = (f"fit: epoch {epoch + 1}, batch {b + 1} of {n_batches}: {what}; that step was not applied, so "
                   "the parameters, optimizer state and BatchNorm statistics are those after the last good step "
                   "(lower the learning rate, or check the data)")
            if bar is not None:
                bar.bar.close()
            if on_nonfinite == "raise":
                for cb in cbs:
                    cb.on_train_end()
                raise NonFiniteError(msg)
            import warnings
            warnings.warn(msg + "; training stopped (on_nonfinite='stop')", RuntimeWarning, stacklevel=3)
            model.stop_training = True
        if val is not None:
            loss, correct, total = model._evaluate_prepared(val[0], val[1], 0)
            logs["val_loss"] = float(loss)
            if model.loss == "cross_entropy":
                logs["val_accuracy"] = float(correct) / float(total)
        if bar is not None and fault is None:
            bar.close(logs, n / max(time.perf_counter() - t0, 1e-9))
        if dist is not None:  # data-parallel: the ranks must still hold the same parameters
            from .distributed import check_in_step
            check_in_step(dist, model, f"fit: epoch {epoch + 1}")
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in cbs:
        cb.on_train_end()
    return history
