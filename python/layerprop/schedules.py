"""Update schedules: how the layers are updated within one training step.

The units of a schedule are the layers with parameters (Linear, BatchNorm1d, LayerNorm).
"""
from __future__ import annotations

from typing import Optional, Tuple

from . import validation as V
from ._codes import SCHEDULE

__all__ = ["Schedule", "Simultaneous", "Layerwise", "LocoProp", "SCHEDULE_TYPES"]

MAX_INNER_STEPS = 10 ** 6  # LocoProp's inner loop runs in the core, where Ctrl-C cannot stop it


class Schedule:
    """Base class of update schedules."""

    code = SCHEDULE["Simultaneous"]
    # its constructor's arguments for saving (layerprop.io): scalars, checked by the constructor
    config_args: Tuple[str, ...] = ()

    def core_args(self, loss: str = "cross_entropy", out_features: int = 1) -> dict:
        """The core's schedule settings for a model with this loss and output width."""
        return dict(schedule=self.code, inner_steps=1, inner_lr=0.0, target_lr=0.0)


class Simultaneous(Schedule):
    """Standard backprop: one backward pass, then every parameter is updated."""

    code = SCHEDULE["Simultaneous"]

    def __repr__(self) -> str:
        return "Simultaneous()"


class Layerwise(Schedule):
    """One unit at a time. Before a unit is updated, its gradient is recomputed with the
    new weights of every unit already updated in this step. Activations that did not change are
    reused: top-down, only the part of the network above the last updated unit runs forward
    again, and backward runs only down to the unit being updated.

    order: "top_down" (from the loss backwards) or "bottom_up"."""

    config_args = ("order",)

    def __init__(self, order: str = "top_down") -> None:
        V.choice(order, "order", ("top_down", "bottom_up"))
        self.order = order
        self.code = SCHEDULE["LayerwiseTopDown" if order == "top_down" else "LayerwiseBottomUp"]

    def __repr__(self) -> str:
        return f"Layerwise(order={self.order!r})"


class LocoProp(Schedule):
    """LocoProp (Amid, Anil & Warmuth, AISTATS 2022). One forward and backward pass give each
    Linear layer a target, cached before any weight moves:

    - variant "S": in pre-activation space, t = a - target_lr * dL/da; local loss
      1/2 ||x W^T + b - t||^2, gradient x^T (x W^T + b - t);
    - variant "M": in post-activation space, t = f(a) - target_lr * dL/da; the matching loss of
      the layer's transfer function f, gradient x^T (f(x W^T + b) - t). For the output layer f is
      the loss's link (softmax for cross_entropy, sigmoid for bce_with_logits, identity for mse).

    Then every Linear layer, its input fixed, takes `inner_steps` steps of the compiled optimizer
    on its own local loss with learning rate inner_lr * max(1 - k/inner_steps, 0.25), k = 0, 1, ...
    (inner_lr=None: the optimizer's lr). The layers' problems are independent and run in
    parallel, one layer per thread. Norm layers take one ordinary optimizer step with their
    backprop gradient. A layer used twice (shared weights) is refused at compile.
    Local gradients sum over the batch, as in the paper's code; dL/da carries the 1/N of the
    mean loss. An adaptive optimizer (Adam, AdamW; the paper used RMSprop and Adam) is
    insensitive to that scale; with SGD choose inner_lr about batch_size times smaller than a
    backprop learning rate, or the local problems diverge.

    units: what target_lr means. "layerprop" (the default): dL/da of layerprop's losses, which
    average over every output element for mse, bce_with_logits and poisson. "paper": the
    paper's gamma, whose loss sums over a sample's outputs (mse as 1/2 the squared error) and
    averages over the batch; compile converts it, target_lr * D for bce_with_logits and
    poisson, * D/2 for mse, * 1 for cross_entropy (D: the model's outputs)."""

    config_args = ("variant", "inner_steps", "inner_lr", "target_lr", "units")

    def __init__(self, variant: str = "M", inner_steps: int = 10, inner_lr: Optional[float] = None,
                 target_lr: float = 10.0, units: str = "layerprop") -> None:
        V.choice(variant, "variant", ("S", "M"))
        inner_steps = V.positive_int(inner_steps, "inner_steps")
        if inner_steps > MAX_INNER_STEPS:
            raise ValueError(f"inner_steps: expected at most {MAX_INNER_STEPS}, got {inner_steps!r}")
        if inner_lr is not None:
            inner_lr = V.positive_float(inner_lr, "inner_lr", "a number > 0 or None")
        tl = V.positive_float(target_lr, "target_lr", "a number > 0")
        self.variant = variant
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.target_lr = tl
        self.units = V.choice(units, "units", ("layerprop", "paper"))
        self.code = SCHEDULE["LocoPropS" if variant == "S" else "LocoPropM"]

    def core_target_lr(self, loss: str, out_features: int) -> float:
        """target_lr in layerprop's units for a model with this loss and output width."""
        if self.units == "layerprop" or loss == "cross_entropy":
            return self.target_lr
        return self.target_lr * out_features / (2.0 if loss == "mse" else 1.0)

    def core_args(self, loss: str = "cross_entropy", out_features: int = 1) -> dict:
        return dict(schedule=self.code, inner_steps=self.inner_steps,
                    inner_lr=0.0 if self.inner_lr is None else self.inner_lr,
                    target_lr=self.core_target_lr(loss, out_features))

    def __repr__(self) -> str:
        units = "" if self.units == "layerprop" else f", units={self.units!r}"
        return (f"LocoProp(variant={self.variant!r}, inner_steps={self.inner_steps}, "
                f"inner_lr={self.inner_lr}, target_lr={self.target_lr}{units})")


# Every schedule of the package (layerprop.io saves and loads these by class name).
SCHEDULE_TYPES: Tuple[type, ...] = (Simultaneous, Layerwise, LocoProp)
