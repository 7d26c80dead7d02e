"""The training loop around the core: batches, shuffling, validation, History, callbacks."""
from __future__ import annotations

import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["History", "Callback", "run_fit"]


class Callback:
    """Base class: override any hook. `model.stop_training = True` ends fit after the epoch."""

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs: Optional[dict] = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None: ...
    def on_train_end(self, logs: Optional[dict] = None) -> None: ...


class History(Callback):
    """Per-epoch metrics of a fit: `history["loss"]`, `["val_loss"]`, `["val_accuracy"]`."""

    def __init__(self) -> None:
        self.history: Dict[str, List[float]] = {}
        self.epoch: List[int] = []

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}[{len(v)}]" for k, v in self.history.items())
        return f"History({keys})"


def _progress_bar(progress: Optional[bool], total: int, desc: str):
    show = progress if progress is not None else sys.stderr.isatty()
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def run_fit(model, X, y, *, epochs: int, batch_size: int, shuffle: bool,
            validation_data, callbacks: Sequence[Callback], progress: Optional[bool]) -> History:
    from .model import _positive_int
    model._require_compiled()
    Xa, ya = model._Xy(X, y)  # converted once for the whole fit
    n = Xa.shape[0]
    if n == 0:
        raise ValueError("X: empty (0 rows); fit needs at least one sample")
    if ya.shape[0] != n:
        raise ValueError(f"y: expected {n} rows to match X, got {ya.shape[0]}")
    epochs = int(epochs) if isinstance(epochs, (int, np.integer)) and not isinstance(epochs, bool) else -1
    if epochs < 0:
        raise ValueError("epochs: expected an int >= 0")
    batch_size = _positive_int(batch_size, "batch_size")
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data: expected a tuple (X_val, y_val)")
        Xv, yv = model._Xy(*validation_data)
        val = (Xv, yv)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}]: expected an lp Callback, got {type(cb).__name__}")
    history = History()
    cbs: List[Callback] = [history, *callbacks]
    for cb in cbs:
        cb.set_model(model)
    model.stop_training = False
    for cb in cbs:
        cb.on_train_begin()
    n_batches = (n + batch_size - 1) // batch_size
    sizes = np.full(n_batches, batch_size, dtype=np.float64)
    sizes[-1] = n - batch_size * (n_batches - 1)
    # Chunks of whole batches per call into the core: the GIL is free while a chunk trains,
    # and a progress bar, if any, moves between chunks.
    chunk = n_batches if progress is False else max(1, min(n_batches, 16))
    for epoch in range(epochs):
        for cb in cbs:
            cb.on_epoch_begin(epoch)
        order = model._fit_rng.permutation(n) if shuffle else np.arange(n, dtype=np.int64)
        order = order.astype(np.int64, copy=False)
        bar = _progress_bar(progress, n_batches, f"epoch {epoch + 1}/{epochs}")
        losses = np.empty(n_batches)
        for b0 in range(0, n_batches, chunk):
            b1 = min(n_batches, b0 + chunk)
            losses[b0:b1] = model._core.train_epoch(Xa, ya, order[b0 * batch_size: b1 * batch_size], batch_size)
            if bar is not None:
                bar.update(b1 - b0)
                bar.set_postfix(loss=f"{losses[b1 - 1]:.4f}")
        if bar is not None:
            bar.close()
        logs = {"loss": float(np.dot(losses, sizes) / n)}
        if val is not None:
            loss, correct = model._core.evaluate(val[0], val[1], 0)
            logs["val_loss"] = float(loss)
            if model.loss == "cross_entropy":
                logs["val_accuracy"] = float(correct) / val[0].shape[0]
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in cbs:
        cb.on_train_end()
    return history
