"""Optimizers: configurations handed to the core, which applies PyTorch's update rules as
one fused in-place pass over parameters, gradients and state."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from . import validation as V
from ._codes import OPT

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "OPTIMIZER_TYPES"]



class Optimizer:
    kind = OPT["None"]
    lr: float
    # the state it keeps per parameter, PyTorch's names, in the core's slot order
    state_names: Tuple[str, ...] = ()
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
    state_names = ("momentum_buffer",)
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
                    nesterov=self.nesterov, beta1=0.9, beta2=0.999, eps=1e-8)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
                f"nesterov={self.nesterov}, weight_decay={self.weight_decay})")


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias corrections; weight_decay adds wd*p to the gradient."""

    kind = OPT["Adam"]
    state_names = ("exp_avg", "exp_avg_sq")
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
        return dict(optimizer=self.kind, lr=self.lr, momentum=0.0, dampening=0.0,
                    weight_decay=self.weight_decay, nesterov=False, beta1=self.betas[0],
                    beta2=self.betas[1], eps=self.eps)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay before the Adam step."""

    kind = OPT["AdamW"]

    def __init__(self, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# Every optimizer of the package (layerprop.io saves and loads these by class name).
OPTIMIZER_TYPES: Tuple[type, ...] = (SGD, Adam, AdamW)
