"""Layers: small specifications. Calling a layer on a symbolic tensor builds a graph; the
C++ core does all the numeric work once the graph is handed to it by a Model."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from . import _core
from ._codes import code

__all__ = [
    "Layer", "Linear", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "ELU", "Softplus",
    "Identity", "Dropout", "BatchNorm1d", "LayerNorm",
    "Input", "SymbolicTensor", "add", "concat",
]

# Node kinds and activation codes, as the core binds them (_core.NodeKind, _core.Act, ...).
NODE_INPUT, NODE_LINEAR, NODE_ACT, NODE_ADD, NODE_CONCAT, NODE_DROPOUT, NODE_BATCHNORM, NODE_LAYERNORM = (
    code("NodeKind", k) for k in ("Input", "Linear", "Activation", "Add", "Concat", "Dropout", "BatchNorm",
                                  "LayerNorm"))
LAYER_LINEAR, LAYER_BATCHNORM, LAYER_LAYERNORM = (code("LayerKind", k) for k in ("Linear", "BatchNorm", "LayerNorm"))
ACT_CODES: Dict[str, int] = {name: int(v.value) for name, v in _core.Act.__members__.items()}


def _check_name(name: Optional[str]) -> Optional[str]:
    if name is not None and (not isinstance(name, str) or not name or "." in name):
        raise ValueError(f"name: expected a non-empty string without '.', got {name!r}")
    return name


class SymbolicTensor:
    """The output of a layer in a graph under construction (no data: a width and its origin)."""

    def __init__(self, width: int, op: str, inputs: Sequence["SymbolicTensor"] = (),
                 layer: Optional["Layer"] = None) -> None:
        self.width = int(width)
        self.op = op
        self.inputs = list(inputs)
        self.layer = layer

    def origin(self, depth: int = 2) -> str:
        """Where this tensor comes from, naming its layers (for error messages), e.g.
        "add(ReLU() on Linear(3, 4, name='enc'), Linear(3, 4))"."""
        if self.op == "input":
            nm = getattr(self, "name", None)
            return f"Input({self.width}" + (f", name={nm!r})" if nm else ")")
        if self.op == "layer" and self.layer is not None:
            d = self.layer.describe()
            if depth > 1 and self.inputs and self.inputs[0].op != "input":
                d += f" on {self.inputs[0].origin(depth - 1)}"
            return d
        if depth <= 1:
            return f"{self.op}(...)"
        return f"{self.op}(" + ", ".join(t.origin(depth - 1) for t in self.inputs) + ")"

    def __repr__(self) -> str:
        return f"<SymbolicTensor width={self.width} from {self.origin()}>"


def Input(features: int, *, name: Optional[str] = None) -> SymbolicTensor:
    """A model input of `features` columns."""
    if not isinstance(features, (int,)) or isinstance(features, bool) or features < 1:
        raise ValueError(f"features: expected a positive int, got {features!r}")
    t = SymbolicTensor(features, "input")
    t.name = _check_name(name)  # type: ignore[attr-defined]
    return t


def _unit_interval(name: str, v: object, what: str) -> float:
    """v as a float in [0, 1], or a ValueError naming the argument."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {what} in [0, 1], got {v!r}") from None
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"{name}: expected {what} in [0, 1], got {v!r}")
    return f


def _check_symbolic(x: object, what: str) -> SymbolicTensor:
    if not isinstance(x, SymbolicTensor):
        raise TypeError(f"{what}: expected a symbolic tensor (from lp.Input or a layer call), got {type(x).__name__}")
    return x


def add(a: SymbolicTensor, b: SymbolicTensor, *more: SymbolicTensor) -> SymbolicTensor:
    """Element-wise sum of tensors of equal width: paths meet and their gradients add."""
    ts = [_check_symbolic(t, "add") for t in (a, b, *more)]
    widths = [t.width for t in ts]
    if len(set(widths)) != 1:
        raise ValueError(f"add: inputs must have equal widths, got {widths} from "
                         + ", ".join(f"{t.origin()} (width {t.width})" for t in ts))
    return SymbolicTensor(widths[0], "add", ts)


def concat(tensors: Sequence[SymbolicTensor]) -> SymbolicTensor:
    """Column-wise concatenation of tensors."""
    ts = [_check_symbolic(t, "concat") for t in tensors]
    if len(ts) < 1:
        raise ValueError("concat: expected at least one tensor")
    return SymbolicTensor(sum(t.width for t in ts), "concat", ts)


class Layer:
    """Base class of every layer: a specification the core turns into a graph node."""

    has_params = False

    def __init__(self, *, name: Optional[str] = None) -> None:
        self.name = _check_name(name)

    def out_width(self, in_width: int) -> int:
        return in_width

    def describe(self) -> str:
        return f"{type(self).__name__}()"

    def __repr__(self) -> str:
        return self.describe()

    def __call__(self, x: SymbolicTensor) -> SymbolicTensor:
        _check_symbolic(x, f"{self.describe()}")
        try:
            width = self.out_width(x.width)
        except ValueError as e:
            raise ValueError(f"{e} (its input comes from {x.origin()})") from None
        return SymbolicTensor(width, "layer", [x], self)

    def param_shapes(self) -> List[tuple]:
        return []


class Linear(Layer):
    """y = x W^T + b with W of shape (out_features, in_features), PyTorch's default init."""

    has_params = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 name: Optional[str] = None) -> None:
        super().__init__(name=name)
        for arg, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{arg}: expected a positive int, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.bias = bool(bias)

    def out_width(self, in_width: int) -> int:
        if in_width != self.in_features:
            raise ValueError(f"{self.describe()}: expects {self.in_features} input features, "
                             f"gets {in_width}")
        return self.out_features

    def describe(self) -> str:
        nm = f", name={self.name!r}" if self.name else ""
        b = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{b}{nm})"

    def init_bound(self) -> float:
        # kaiming_uniform(a=sqrt(5)) on (out, in) gives bound 1/sqrt(fan_in); the bias too.
        return 1.0 / math.sqrt(self.in_features)

    def param_shapes(self) -> List[tuple]:
        shapes: List[tuple] = [("weight", (self.out_features, self.in_features))]
        if self.bias:
            shapes.append(("bias", (self.out_features,)))
        return shapes


class _Activation(Layer):
    slope = 0.0

    @property
    def act_code(self) -> int:
        for cls in type(self).__mro__:  # a subclass of lp.ReLU is a ReLU
            if cls.__name__ in ACT_CODES and cls.__module__ == __name__:
                return ACT_CODES[cls.__name__]
        raise TypeError(f"{type(self).__name__}: not an activation the core knows")

    def core_settings(self) -> Dict[str, float]:
        """The settings the core's functor reads, by NodeSpec field name."""
        return {}


class ReLU(_Activation):
    """max(x, 0)."""


class LeakyReLU(_Activation):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        s = float(negative_slope)
        if not math.isfinite(s):
            raise ValueError(f"negative_slope: expected a finite number, got {negative_slope!r}")
        self.negative_slope = s
        self.slope = s

    def core_settings(self) -> Dict[str, float]:
        return {"negative_slope": self.negative_slope}

    def describe(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class Tanh(_Activation):
    """tanh(x)."""


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""


class GELU(_Activation):
    """x * Phi(x), the exact erf form (PyTorch's approximate='none')."""


class SiLU(_Activation):
    """x * sigmoid(x) (swish)."""


def _finite(name: str, v: object) -> float:
    try:
        f = float(v) if not isinstance(v, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = math.nan
    if not math.isfinite(f):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return f


class ELU(_Activation):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    def __init__(self, alpha: float = 1.0, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.alpha = _finite("alpha", alpha)

    def core_settings(self) -> Dict[str, float]:
        return {"alpha": self.alpha}

    def describe(self) -> str:
        return f"ELU(alpha={self.alpha})"


class Softplus(_Activation):
    """log(1 + exp(beta * x)) / beta, and x where beta * x > threshold (PyTorch's rule)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.beta = _finite("beta", beta)
        if not self.beta > 0:
            raise ValueError(f"beta: expected a number > 0, got {beta!r}")
        self.threshold = _finite("threshold", threshold)

    def core_settings(self) -> Dict[str, float]:
        return {"beta": self.beta, "threshold": self.threshold}

    def describe(self) -> str:
        return f"Softplus(beta={self.beta}, threshold={self.threshold})"


class Identity(_Activation):
    """x."""


class Dropout(Layer):
    """In training mode, zeroes each element with probability p and scales the rest by
    1/(1-p); the identity in evaluation mode (model.eval()) and in predict/evaluate."""

    def __init__(self, p: float = 0.5, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.p = _unit_interval("p", p, "a probability")

    def describe(self) -> str:
        return f"Dropout(p={self.p})"


def _check_features(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"num_features: expected a positive int, got {v!r}")
    return v


def _check_eps(v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"eps: expected a number > 0, got {v!r}") from None
    if not (f > 0 and math.isfinite(f)):
        raise ValueError(f"eps: expected a number > 0, got {v!r}")
    return f


class _Norm(Layer):
    """Normalization over the features of each sample (LayerNorm) or over the batch (BatchNorm1d)."""

    has_params = True
    num_features: int

    def out_width(self, in_width: int) -> int:
        if in_width != self.num_features:
            raise ValueError(f"{self.describe()}: expects {self.num_features} input features, gets {in_width}")
        return in_width

    def param_shapes(self) -> List[tuple]:
        return [("weight", (self.num_features,)), ("bias", (self.num_features,))]


class BatchNorm1d(_Norm):
    """Batch normalization of (N, C) inputs, PyTorch's conventions. Training: batch mean and
    biased variance; running statistics r = (1 - momentum) r + momentum * stat, with the
    unbiased variance. Inference (predict, evaluate, model.eval()): running statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.num_features = _check_features(num_features)
        self.eps = _check_eps(eps)
        self.momentum = _unit_interval("momentum", momentum, "a number")
        self.affine = bool(affine)
        self.has_params = self.affine

    def param_shapes(self) -> List[tuple]:
        return super().param_shapes() if self.affine else []

    def describe(self) -> str:
        nm = f", name={self.name!r}" if self.name else ""
        extra = "" if self.affine else ", affine=False"
        return f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}{extra}{nm})"


class LayerNorm(_Norm):
    """Normalizes each sample over its features (biased variance), then weight * x + bias."""

    def __init__(self, num_features: int, eps: float = 1e-5, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.num_features = _check_features(num_features)
        self.eps = _check_eps(eps)

    def describe(self) -> str:
        nm = f", name={self.name!r}" if self.name else ""
        return f"LayerNorm({self.num_features}, eps={self.eps}{nm})"
