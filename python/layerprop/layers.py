"""Layers: small specifications. Calling a layer on a symbolic tensor builds a graph; the
C++ core does all the numeric work once the graph is handed to it by a Model."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import numpy as np

from . import _core
from . import reference as R
from . import validation as V
from ._codes import ACT, LAYER, NODE

__all__ = [
    "Layer", "Linear", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "ELU", "Softplus",
    "Identity", "Dropout", "BatchNorm1d", "LayerNorm",
    "Input", "SymbolicTensor", "add", "concat", "LAYER_TYPES",
]

# A graph node and a stored layer as the core takes them: classes with named fields.
NodeSpec = _core.NodeSpec
LayerSpec = _core.LayerSpec


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
    features = V.positive_int(features, "features")
    t = SymbolicTensor(features, "input")
    t.name = _check_name(name)  # type: ignore[attr-defined]
    return t


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
    """Base class of every layer: a specification the core turns into a graph node.

    A layer knows what the rest of the package needs of it: its node for the core
    (`core_node`), its stored parameters or statistics (`stored`, `core_layer`,
    `param_shapes`, `buffer_shapes`, `init_tensor`, `init_buffer`), the width of input it
    requires (`input_width`), its configuration for saving (`config_fields`, `get_config`,
    `from_config`), its PyTorch twin (`torch_name`, `to_torch`, `from_torch`), its ONNX
    node (`to_onnx`) and its float64 NumPy reference (`reference_forward`,
    `reference_grad`). `tensors` arguments map the layer's own tensor names ("weight",
    "running_mean") to arrays."""

    has_params = False
    stored = False  # the core stores parameters or running statistics for it
    input_width: Optional[int] = None  # the input width it requires (None: any, kept)

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

    def core_node(self, inputs: List[int], width: int, stored_index: int) -> NodeSpec:
        """This layer's node for the core, given its input nodes, its output width and its
        index among the stored layers (-1 when not stored)."""
        raise TypeError(f"{self.describe()}: layer type not supported by the core")

    def core_layer(self) -> LayerSpec:
        """The stored layer for the core (only for `stored` layers)."""
        raise TypeError(f"{self.describe()}: stores nothing in the core")

    def param_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """(name, shape) of its parameters, in the core's order."""
        return []

    def buffer_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """(name, shape) of its buffers (state not trained by gradients)."""
        return []

    def init_tensor(self, name: str, view: np.ndarray, rng: np.random.Generator) -> None:
        """PyTorch's default initialization of parameter `name`, in place."""

    def init_buffer(self, name: str, view: np.ndarray) -> None:
        """The initial value of buffer `name`, in place."""

    # ---- saving (layerprop.io): the constructor's arguments, each with its JSON kind
    config_fields: Tuple[Tuple[str, str], ...] = ()  # (argument, "int" | "float" | "bool")

    def get_config(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k, _kind in self.config_fields}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: Optional[str]) -> "Layer":
        return cls(**config, name=name)  # type: ignore[call-arg]

    # ---- PyTorch (layerprop.interop)
    torch_name: Optional[str] = None  # the class name of its torch.nn twin

    def to_torch(self, torch: Any, dtype: Any, tensors: Mapping[str, np.ndarray]) -> Any:
        return getattr(torch.nn, str(self.torch_name))(**self.get_config())

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        return cls(name=name)

    # ---- ONNX (layerprop.export)
    onnx_op: Optional[str] = None

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        """Its ONNX nodes; `init(name, array)` adds an initializer named after the layer."""
        if self.onnx_op is None:
            raise TypeError(f"to_onnx: no ONNX mapping for {self.describe()}")
        return [helper.make_node(self.onnx_op, inputs, [output])]

    # ---- float64 reference (layerprop.reference; lp.explain)
    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        """Its output on x in float64 NumPy (dropout: the identity)."""
        raise TypeError(f"{self.describe()}: no float64 reference")

    def reference_grad(self, x: np.ndarray) -> np.ndarray:
        """d output / d input, element-wise (the layers that act on each unit alone)."""
        raise TypeError(f"{self.describe()}: not supported by path_gradients")


class Linear(Layer):
    """y = x W^T + b with W of shape (out_features, in_features), PyTorch's default init."""

    has_params = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.in_features = V.positive_int(in_features, "in_features")
        self.out_features = V.positive_int(out_features, "out_features")
        self.bias = bool(bias)

    @property
    def input_width(self) -> int:  # type: ignore[override]
        return self.in_features

    stored = True

    def core_layer(self) -> LayerSpec:
        return LayerSpec(kind=LAYER["Linear"], in_features=self.in_features, out_features=self.out_features,
                         bias=self.bias, eps=0.0, momentum=0.0)

    def core_node(self, inputs: List[int], width: int, stored_index: int) -> NodeSpec:
        return NodeSpec(kind=NODE["Linear"], inputs=inputs, width=width, layer=stored_index)

    def init_tensor(self, name: str, view: np.ndarray, rng: np.random.Generator) -> None:
        bound = self.init_bound()
        view[...] = rng.uniform(-bound, bound, size=view.shape).astype(view.dtype)

    def out_width(self, in_width: int) -> int:
        if in_width != self.in_features:
            raise ValueError(f"{self.describe()}: expects {self.in_features} input features, "
                             f"gets {in_width}")
        return self.out_features

    def describe(self) -> str:
        nm = f", name={self.name!r}" if self.name else ""
        b = "" if self.bias else ", bias=False"
        return f"Linear({self.in_features}, {self.out_features}{b}{nm})"

    config_fields = (("in_features", "int"), ("out_features", "int"), ("bias", "bool"))
    torch_name = "Linear"

    def to_torch(self, torch: Any, dtype: Any, tensors: Mapping[str, np.ndarray]) -> Any:
        m = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias, dtype=dtype)
        _copy_to_torch(torch, m, tensors, ("weight", "bias") if self.bias else ("weight",))
        return m

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        return cls(module.in_features, module.out_features, bias=module.bias is not None, name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        gemm_in = [inputs[0], init("weight", tensors["weight"])]
        if self.bias:
            gemm_in.append(init("bias", tensors["bias"]))
        return [helper.make_node("Gemm", gemm_in, [output], transB=1)]

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return R.linear_forward(x, tensors["weight"], tensors["bias"] if self.bias else None)

    def init_bound(self) -> float:
        # kaiming_uniform(a=sqrt(5)) on (out, in) gives bound 1/sqrt(fan_in); the bias too.
        return 1.0 / math.sqrt(self.in_features)

    def param_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        shapes: List[Tuple[str, Tuple[int, ...]]] = [("weight", (self.out_features, self.in_features))]
        if self.bias:
            shapes.append(("bias", (self.out_features,)))
        return shapes


class _Activation(Layer):
    # its float64 twin: f(x) and f'(x) from layerprop.reference
    _ref: Tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return type(self)._ref[0](x)

    def reference_grad(self, x: np.ndarray) -> np.ndarray:
        return type(self)._ref[1](x)

    @property
    def act_code(self) -> int:
        for cls in type(self).__mro__:  # a subclass of lp.ReLU is a ReLU
            if cls.__name__ in ACT and cls.__module__ == __name__:
                return ACT[cls.__name__]
        raise TypeError(f"{type(self).__name__}: not an activation the core knows")

    def core_settings(self) -> Dict[str, float]:
        """The settings the core's activation functor reads, by NodeSpec field name."""
        return {}

    def core_node(self, inputs: List[int], width: int, stored_index: int) -> NodeSpec:
        return NodeSpec(kind=NODE["Activation"], inputs=inputs, width=width, act=self.act_code,
                        **self.core_settings())  # type: ignore[arg-type]


class ReLU(_Activation):
    """max(x, 0)."""

    _ref = (R.relu, R.relu_grad)
    torch_name = "ReLU"
    onnx_op = "Relu"


class LeakyReLU(_Activation):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.negative_slope = V.finite_float(negative_slope, "negative_slope")

    def core_settings(self) -> Dict[str, float]:
        return {"negative_slope": self.negative_slope}

    config_fields = (("negative_slope", "float"),)
    torch_name = "LeakyReLU"
    onnx_op = "LeakyRelu"

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        return cls(negative_slope=module.negative_slope, name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        return [helper.make_node("LeakyRelu", inputs, [output], alpha=float(self.negative_slope))]

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return R.leaky_relu(x, self.negative_slope)

    def reference_grad(self, x: np.ndarray) -> np.ndarray:
        return R.leaky_relu_grad(x, self.negative_slope)

    def describe(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class Tanh(_Activation):
    """tanh(x)."""

    _ref = (R.tanh, R.tanh_grad)
    torch_name = "Tanh"
    onnx_op = "Tanh"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""

    _ref = (R.sigmoid, R.sigmoid_grad)
    torch_name = "Sigmoid"
    onnx_op = "Sigmoid"


class GELU(_Activation):
    """x * Phi(x), the exact erf form (PyTorch's approximate='none')."""

    _ref = (R.gelu, R.gelu_grad)
    torch_name = "GELU"
    onnx_op = "Gelu"

    def to_torch(self, torch: Any, dtype: Any, tensors: Mapping[str, np.ndarray]) -> Any:
        return torch.nn.GELU(approximate="none")

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        if module.approximate != "none":
            raise ValueError(f"{where}: only GELU(approximate='none') is supported")
        return cls(name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        return [helper.make_node("Gelu", inputs, [output], approximate="none")]


class SiLU(_Activation):
    """x * sigmoid(x) (swish)."""

    _ref = (R.silu, R.silu_grad)
    torch_name = "SiLU"

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        return [helper.make_node("Sigmoid", inputs, [f"{output}_sig"]),
                helper.make_node("Mul", [inputs[0], f"{output}_sig"], [output])]


class ELU(_Activation):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    def __init__(self, alpha: float = 1.0, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.alpha = V.finite_float(alpha, "alpha")

    config_fields = (("alpha", "float"),)
    torch_name = "ELU"

    def core_settings(self) -> Dict[str, float]:
        return {"alpha": self.alpha}

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        return cls(alpha=module.alpha, name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        return [helper.make_node("Elu", inputs, [output], alpha=float(self.alpha))]

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return R.elu(x, self.alpha)

    def reference_grad(self, x: np.ndarray) -> np.ndarray:
        return R.elu_grad(x, self.alpha)

    def describe(self) -> str:
        return f"ELU(alpha={self.alpha})"


class Softplus(_Activation):
    """log(1 + exp(beta * x)) / beta, and x where beta * x > threshold (PyTorch's rule)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.beta = V.positive_float(beta, "beta", "a number > 0")
        self.threshold = V.finite_float(threshold, "threshold")

    config_fields = (("beta", "float"), ("threshold", "float"))
    torch_name = "Softplus"

    def core_settings(self) -> Dict[str, float]:
        return {"beta": self.beta, "threshold": self.threshold}

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        if not module.beta > 0:
            raise ValueError(f"{where}: Softplus with beta={module.beta} is not supported (beta must be > 0)")
        return cls(beta=module.beta, threshold=module.threshold, name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        # Where(beta x > threshold, x, softplus(beta x) / beta) with softplus(z) = max(z, 0) +
        # log(1 + exp(-|z|)): never overflows, and runs in float64 (onnxruntime's Softplus is
        # float32 only).
        beta = init("beta", np.full(1, self.beta))
        thr = init("threshold", np.full(1, self.threshold))
        one = init("one", np.ones(1))
        x = inputs[0]
        n = lambda k: f"{output}_{k}"  # noqa: E731
        steps = [("Mul", [x, beta], "bx"), ("Relu", [n("bx")], "pos"), ("Abs", [n("bx")], "abs"),
                 ("Neg", [n("abs")], "nabs"), ("Exp", [n("nabs")], "e"), ("Add", [one, n("e")], "e1"),
                 ("Log", [n("e1")], "log"), ("Add", [n("pos"), n("log")], "sp"), ("Div", [n("sp"), beta], "spb"),
                 ("Greater", [n("bx"), thr], "lin")]
        nodes = [helper.make_node(op, args, [n(dst)]) for op, args, dst in steps]
        nodes.append(helper.make_node("Where", [n("lin"), x, n("spb")], [output]))
        return nodes

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return R.softplus(x, self.beta, self.threshold)

    def reference_grad(self, x: np.ndarray) -> np.ndarray:
        return R.softplus_grad(x, self.beta, self.threshold)

    def describe(self) -> str:
        return f"Softplus(beta={self.beta}, threshold={self.threshold})"


class Identity(_Activation):
    """x."""

    _ref = (R.identity, R.identity_grad)
    torch_name = "Identity"
    onnx_op = "Identity"


class Dropout(Layer):
    """In training mode, zeroes each element with probability p and scales the rest by
    1/(1-p); the identity in evaluation mode (model.eval()) and in predict/evaluate."""

    def __init__(self, p: float = 0.5, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.p = V.probability(p, "p")

    def core_node(self, inputs: List[int], width: int, stored_index: int) -> NodeSpec:
        return NodeSpec(kind=NODE["Dropout"], inputs=inputs, width=width, p=self.p)

    config_fields = (("p", "float"),)
    torch_name = "Dropout"
    onnx_op = "Identity"  # inference

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        return cls(p=module.p, name=name)

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return R.identity(x)  # dropout off: its mask lives in the core

    def reference_grad(self, x: np.ndarray) -> np.ndarray:
        return R.identity_grad(x)

    def describe(self) -> str:
        return f"Dropout(p={self.p})"


class _Norm(Layer):
    """Normalization over the features of each sample (LayerNorm) or over the batch (BatchNorm1d)."""

    has_params = True
    stored = True
    num_features: int
    node_kind = "LayerNorm"

    @property
    def input_width(self) -> int:  # type: ignore[override]
        return self.num_features

    def core_node(self, inputs: List[int], width: int, stored_index: int) -> NodeSpec:
        return NodeSpec(kind=NODE[self.node_kind], inputs=inputs, width=width, layer=stored_index)

    def init_tensor(self, name: str, view: np.ndarray, rng: np.random.Generator) -> None:
        view[...] = 1.0 if name == "weight" else 0.0

    def out_width(self, in_width: int) -> int:
        if in_width != self.num_features:
            raise ValueError(f"{self.describe()}: expects {self.num_features} input features, gets {in_width}")
        return in_width

    def param_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        return [("weight", (self.num_features,)), ("bias", (self.num_features,))]


class BatchNorm1d(_Norm):
    """Batch normalization of (N, C) inputs, PyTorch's conventions. Training: batch mean and
    biased variance; running statistics r = (1 - momentum) r + momentum * stat, with the
    unbiased variance. Inference (predict, evaluate, model.eval()): running statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.num_features = V.positive_int(num_features, "num_features")
        self.eps = V.positive_float(eps, "eps", "a number > 0")
        self.momentum = V.probability(momentum, "momentum", "a number")
        self.affine = bool(affine)
        self.has_params = self.affine

    node_kind = "BatchNorm"
    config_fields = (("num_features", "int"), ("eps", "float"), ("momentum", "float"), ("affine", "bool"))
    torch_name = "BatchNorm1d"

    def to_torch(self, torch: Any, dtype: Any, tensors: Mapping[str, np.ndarray]) -> Any:
        m = torch.nn.BatchNorm1d(self.num_features, eps=self.eps, momentum=self.momentum,
                                 affine=self.affine, dtype=dtype)
        _copy_to_torch(torch, m, tensors, (("weight", "bias") if self.affine else ())
                       + ("running_mean", "running_var"))
        return m

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        if not module.track_running_stats or module.momentum is None:
            raise ValueError(f"{where}: needs track_running_stats=True and a momentum (not None)")
        return cls(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                   name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        n = self.num_features
        scale = tensors["weight"] if self.affine else np.ones(n)
        bias = tensors["bias"] if self.affine else np.zeros(n)
        return [helper.make_node(
            "BatchNormalization",
            [inputs[0], init("weight", scale), init("bias", bias),
             init("running_mean", tensors["running_mean"]), init("running_var", tensors["running_var"])],
            [output], epsilon=float(self.eps))]

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        """Training: batch mean and biased variance; inference: the running statistics."""
        stats = {} if training else dict(running_mean=tensors["running_mean"], running_var=tensors["running_var"])
        return R.batchnorm_forward(x, self.eps, tensors.get("weight"), tensors.get("bias"), **stats)

    def core_layer(self) -> LayerSpec:
        return LayerSpec(kind=LAYER["BatchNorm"], in_features=self.num_features, out_features=self.num_features,
                         bias=self.affine, eps=self.eps, momentum=self.momentum)

    def param_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        return super().param_shapes() if self.affine else []

    def buffer_shapes(self) -> List[Tuple[str, Tuple[int, ...]]]:
        return [("running_mean", (self.num_features,)), ("running_var", (self.num_features,))]

    def init_buffer(self, name: str, view: np.ndarray) -> None:
        view[...] = 1.0 if name == "running_var" else 0.0

    def describe(self) -> str:
        nm = f", name={self.name!r}" if self.name else ""
        extra = "" if self.affine else ", affine=False"
        return f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}{extra}{nm})"


class LayerNorm(_Norm):
    """Normalizes each sample over its features (biased variance), then weight * x + bias."""

    def __init__(self, num_features: int, eps: float = 1e-5, *, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.num_features = V.positive_int(num_features, "num_features")
        self.eps = V.positive_float(eps, "eps", "a number > 0")

    def core_layer(self) -> LayerSpec:
        return LayerSpec(kind=LAYER["LayerNorm"], in_features=self.num_features, out_features=self.num_features,
                         bias=True, eps=self.eps, momentum=0.0)

    config_fields = (("num_features", "int"), ("eps", "float"))
    torch_name = "LayerNorm"

    def to_torch(self, torch: Any, dtype: Any, tensors: Mapping[str, np.ndarray]) -> Any:
        m = torch.nn.LayerNorm(self.num_features, eps=self.eps, dtype=dtype)
        _copy_to_torch(torch, m, tensors, ("weight", "bias"))
        return m

    @classmethod
    def from_torch(cls, module: Any, name: Optional[str], where: str) -> "Layer":
        if len(module.normalized_shape) != 1 or not module.elementwise_affine or module.bias is None:
            raise ValueError(f"{where}: only LayerNorm over the last dimension with elementwise_affine=True "
                             "and bias=True is supported")
        return cls(module.normalized_shape[0], eps=module.eps, name=name)

    def to_onnx(self, helper: Any, inputs: List[str], output: str,
                init: Callable[[str, np.ndarray], str], tensors: Mapping[str, np.ndarray]) -> List[Any]:
        return [helper.make_node("LayerNormalization", [inputs[0], init("weight", tensors["weight"]),
                                                        init("bias", tensors["bias"])],
                                 [output], axis=-1, epsilon=float(self.eps))]

    def reference_forward(self, x: np.ndarray, tensors: Mapping[str, np.ndarray], training: bool) -> np.ndarray:
        return R.layernorm_forward(x, self.eps, tensors["weight"], tensors["bias"])

    def describe(self) -> str:
        nm = f", name={self.name!r}" if self.name else ""
        return f"LayerNorm({self.num_features}, eps={self.eps}{nm})"


def _copy_to_torch(torch: Any, module: Any, tensors: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    """Copy the layer's tensors into the module's parameters and buffers of the same names."""
    with torch.no_grad():
        for n in names:
            getattr(module, n).copy_(torch.from_numpy(np.array(tensors[n])))


# The activation layers by their snake_case names (the command line's --activation).
ACTIVATION_LAYERS: Dict[str, Type[_Activation]] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid, "gelu": GELU, "silu": SiLU,
    "elu": ELU, "softplus": Softplus, "identity": Identity}

# Every layer type of the package, each exactly once (io registers them for saving; interop
# and from_torch map them to and from torch.nn).
LAYER_TYPES: Tuple[Type[Layer], ...] = (Linear, ReLU, LeakyReLU, Tanh, Sigmoid, GELU, SiLU, ELU, Softplus, Identity,
                                        Dropout,
                                 BatchNorm1d, LayerNorm)
