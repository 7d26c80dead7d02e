"""Optimizers: configurations handed to the core, which applies PyTorch's update rules as
one fused in-place pass over parameters, gradients and state."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from . import validation as V
from ._codes import OPT

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "OPTIMIZER_TYPES"]


class Optimizer:
    kind = OPT["None_"]
    lr: float
    # its constructor's arguments for saving (layerprop.io), each with its JSON kind:
    # "float", "bool" or "pair" (two floats, e.g. betas)
    config_fields: Tuple[Tuple[str, str], ...] = ()

    def get_config(self) -> Dict[str, Any]:
        return {k: list(getattr(self, k)) if kind == "pair" else getattr(self, k) for k, kind in self.config_fields}

    def core_args(self) -> dict:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's momentum, dampening, nesterov and
    weight_decay semantics."""

    kind = OPT["SGD"]
    config_fields = (("lr", "float"), ("momentum", "float"), ("dampening", "float"), ("nesterov", "bool"),
                     ("weight_decay", "float"))

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.lr = V.nonneg_float(lr, "lr")
        self.momentum = V.nonneg_float(momentum, "momentum")
        self.dampening = V.finite_float(dampening, "dampening")
        self.nesterov = bool(nesterov)
        self.weight_decay = V.nonneg_float(weight_decay, "weight_decay")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: requires momentum > 0 and dampening == 0")

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, momentum=self.momentum,
                    dampening=self.dampening, weight_decay=self.weight_decay,
                    nesterov=self.nesterov)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
                f"nesterov={self.nesterov}, weight_decay={self.weight_decay})")


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias corrections; weight_decay adds wd*p to the gradient."""

    kind = OPT["Adam"]
    config_fields = (("lr", "float"), ("betas", "pair"), ("eps", "float"), ("weight_decay", "float"))

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.lr = V.nonneg_float(lr, "lr")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"betas: expected two numbers, got {betas!r}") from None
        self.betas = (V.real(b1, "betas[0]", 0.0, 1.0, hi_open=True),
                      V.real(b2, "betas[1]", 0.0, 1.0, hi_open=True))
        self.eps = V.nonneg_float(eps, "eps")
        self.weight_decay = V.nonneg_float(weight_decay, "weight_decay")

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, weight_decay=self.weight_decay,
                    beta1=self.betas[0], beta2=self.betas[1], eps=self.eps)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay before the Adam step."""

    kind = OPT["AdamW"]

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    """RMSprop with PyTorch's rules (torch.optim.RMSprop): square_avg = alpha * square_avg +
    (1 - alpha) * g^2; centered subtracts the squared running mean of the gradients; momentum
    keeps a buffer of g / (sqrt(.) + eps); weight_decay adds wd*p to the gradient."""

    kind = OPT["RMSprop"]
    config_fields = (("lr", "float"), ("alpha", "float"), ("eps", "float"), ("weight_decay", "float"),
                     ("momentum", "float"), ("centered", "bool"))

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        self.lr = V.nonneg_float(lr, "lr")
        self.alpha = V.nonneg_float(alpha, "alpha")
        self.eps = V.nonneg_float(eps, "eps")
        self.weight_decay = V.nonneg_float(weight_decay, "weight_decay")
        self.momentum = V.nonneg_float(momentum, "momentum")
        if not isinstance(centered, bool):
            raise ValueError(f"centered: expected True or False, got {centered!r}")
        self.centered = centered

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, alpha=self.alpha, eps=self.eps,
                    weight_decay=self.weight_decay, momentum=self.momentum, centered=self.centered)

    def __repr__(self) -> str:
        return (f"RMSprop(lr={self.lr}, alpha={self.alpha}, eps={self.eps}, weight_decay={self.weight_decay}, "
                f"momentum={self.momentum}, centered={self.centered})")


class Adagrad(Optimizer):
    """Adagrad with PyTorch's rules (torch.optim.Adagrad): sum += g^2 (starting at
    initial_accumulator_value); p -= clr * g / (sqrt(sum) + eps) with
    clr = lr / (1 + (step - 1) * lr_decay); weight_decay adds wd*p to the gradient."""

    kind = OPT["Adagrad"]
    config_fields = (("lr", "float"), ("lr_decay", "float"), ("weight_decay", "float"),
                     ("initial_accumulator_value", "float"), ("eps", "float"))

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> None:
        self.lr = V.nonneg_float(lr, "lr")
        self.lr_decay = V.nonneg_float(lr_decay, "lr_decay")
        self.weight_decay = V.nonneg_float(weight_decay, "weight_decay")
        self.initial_accumulator_value = V.nonneg_float(initial_accumulator_value, "initial_accumulator_value")
        self.eps = V.nonneg_float(eps, "eps")

    def core_args(self) -> dict:
        return dict(optimizer=self.kind, lr=self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                    initial_accumulator_value=self.initial_accumulator_value, eps=self.eps)

    def __repr__(self) -> str:
        return (f"Adagrad(lr={self.lr}, lr_decay={self.lr_decay}, weight_decay={self.weight_decay}, "
                f"initial_accumulator_value={self.initial_accumulator_value}, eps={self.eps})")


# Every optimizer of the package (layerprop.io saves and loads these by class name).
OPTIMIZER_TYPES: Tuple[type, ...] = (SGD, Adam, AdamW, RMSprop, Adagrad)
