"""Optimizers: configurations handed to the core, which applies PyTorch's update rules as
one fused in-place pass over parameters, gradients and state."""
from __future__ import annotations

import math
from typing import Tuple

from ._codes import code

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]

OPT_SGD, OPT_ADAM, OPT_ADAMW = code("OptKind", "SGD"), code("OptKind", "Adam"), code("OptKind", "AdamW")
OPT_RMSPROP, OPT_ADAGRAD = code("OptKind", "RMSprop"), code("OptKind", "Adagrad")


def _nonneg(name: str, v: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    return f


class Optimizer:
    kind = 0
    lr: float

    def core_args(self) -> dict:
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor's arguments by name (what a saved file records)."""
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's momentum, dampening, nesterov and
    weight_decay semantics."""

    kind = OPT_SGD

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.lr = _nonneg("lr", lr)
        self.momentum = _nonneg("momentum", momentum)
        self.dampening = float(dampening)
        if not math.isfinite(self.dampening):
            raise ValueError(f"dampening: expected a finite number, got {dampening!r}")
        self.nesterov = bool(nesterov)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening == 0")

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, momentum=self.momentum,
                    dampening=self.dampening, weight_decay=self.weight_decay,
                    nesterov=self.nesterov)

    def get_config(self) -> dict:
        return dict(lr=self.lr, momentum=self.momentum, dampening=self.dampening,
                    nesterov=self.nesterov, weight_decay=self.weight_decay)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
                f"nesterov={self.nesterov}, weight_decay={self.weight_decay})")


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias corrections; weight_decay adds wd*p to the gradient."""

    kind = OPT_ADAM

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.lr = _nonneg("lr", lr)
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas: expected two numbers, got {betas!r}") from None
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas: betas[{i}] must be in [0, 1), got {b}")
        self.betas = (b1, b2)
        self.eps = _nonneg("eps", eps)
        self.weight_decay = _nonneg("weight_decay", weight_decay)

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, weight_decay=self.weight_decay,
                    beta1=self.betas[0], beta2=self.betas[1], eps=self.eps)

    def get_config(self) -> dict:
        return dict(lr=self.lr, betas=list(self.betas), eps=self.eps, weight_decay=self.weight_decay)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay before the Adam step."""

    kind = OPT_ADAMW

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop with PyTorch's rules (torch.optim.RMSprop): square_avg = alpha * square_avg +
    (1 - alpha) * g^2; centered subtracts the squared running mean of the gradients; momentum
    keeps a buffer of g / (sqrt(.) + eps); weight_decay adds wd*p to the gradient."""

    kind = OPT_RMSPROP

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        self.lr = _nonneg("lr", lr)
        self.alpha = _nonneg("alpha", alpha)
        self.eps = _nonneg("eps", eps)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        self.momentum = _nonneg("momentum", momentum)
        if not isinstance(centered, bool):
            raise ValueError(f"centered: expected True or False, got {centered!r}")
        self.centered = centered

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, alpha=self.alpha, eps=self.eps,
                    weight_decay=self.weight_decay, momentum=self.momentum, centered=self.centered)

    def get_config(self) -> dict:
        return dict(lr=self.lr, alpha=self.alpha, eps=self.eps, weight_decay=self.weight_decay,
                    momentum=self.momentum, centered=self.centered)

    def __repr__(self) -> str:
        return (f"RMSprop(lr={self.lr}, alpha={self.alpha}, eps={self.eps}, weight_decay={self.weight_decay}, "
                f"momentum={self.momentum}, centered={self.centered})")


class Adagrad(Optimizer):
    """Adagrad with PyTorch's rules (torch.optim.Adagrad): sum += g^2 (starting at
    initial_accumulator_value); p -= clr * g / (sqrt(sum) + eps) with
    clr = lr / (1 + (step - 1) * lr_decay); weight_decay adds wd*p to the gradient."""

    kind = OPT_ADAGRAD

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> None:
        self.lr = _nonneg("lr", lr)
        self.lr_decay = _nonneg("lr_decay", lr_decay)
        self.weight_decay = _nonneg("weight_decay", weight_decay)
        self.initial_accumulator_value = _nonneg("initial_accumulator_value", initial_accumulator_value)
        self.eps = _nonneg("eps", eps)

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                    initial_accumulator_value=self.initial_accumulator_value, eps=self.eps)

    def get_config(self) -> dict:
        return dict(lr=self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                    initial_accumulator_value=self.initial_accumulator_value, eps=self.eps)

    def __repr__(self) -> str:
        return (f"Adagrad(lr={self.lr}, lr_decay={self.lr_decay}, weight_decay={self.weight_decay}, "
                f"initial_accumulator_value={self.initial_accumulator_value}, eps={self.eps})")
