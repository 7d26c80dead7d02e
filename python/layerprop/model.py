"""Model and Sequential: a graph of layers handed to the C++ core once, then trained,
evaluated and inspected through it."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._codes import code as _code
from .layers import (LAYER_BATCHNORM, LAYER_LAYERNORM, LAYER_LINEAR, NODE_ACT, NODE_ADD,
                     NODE_BATCHNORM, NODE_CONCAT, NODE_DROPOUT, NODE_INPUT, NODE_LAYERNORM,
                     NODE_LINEAR, BatchNorm1d, Dropout, Input, Layer, LayerNorm, Linear,
                     SymbolicTensor, _Activation, _Norm)
from .optim import Optimizer
from .schedules import Schedule, Simultaneous

__all__ = ["Model", "Sequential"]

# Loss names and their codes, as the core binds them (_core.LossKind).
LOSSES = {name: _code("LossKind", kind) for name, kind in
          (("cross_entropy", "CrossEntropy"), ("mse", "MSE"), ("bce_with_logits", "BCEWithLogits"),
           ("poisson", "Poisson"))}
_DTYPES = {"float32": np.float32, "float64": np.float64}


def _dtype_name(dtype: object) -> str:
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return name


class Model:
    """A graph of layers from `inputs` to `outputs` (see lp.Input, lp.add, lp.concat)."""

    def __init__(self, inputs: SymbolicTensor, outputs: SymbolicTensor, dtype: str = "float32",
                 seed: Optional[int] = None) -> None:
        self._init_graph(inputs, outputs, dtype, seed)

    # ------------------------------------------------------------------ construction
    def _init_graph(self, inputs: SymbolicTensor, outputs: SymbolicTensor, dtype: object,
                    seed: Optional[int], names: Optional[Dict[int, str]] = None) -> None:
        self.dtype = _dtype_name(dtype)
        self._np_dtype = _DTYPES[self.dtype]
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 1:
                raise ValueError("inputs: exactly one input is supported")
            inputs = inputs[0]
        if isinstance(outputs, (list, tuple)):
            if len(outputs) != 1:
                raise ValueError("outputs: exactly one output is supported")
            outputs = outputs[0]
        for arg, t in (("inputs", inputs), ("outputs", outputs)):
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"{arg}: expected a symbolic tensor, got {type(t).__name__}")
        if inputs.op != "input":
            raise ValueError("inputs: expected a tensor made by lp.Input")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
            raise ValueError(f"seed: expected an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)

        # Topological order of everything the output depends on (depth-first, inputs first).
        order: List[SymbolicTensor] = []
        seen: Dict[int, int] = {}
        stack: List[Tuple[SymbolicTensor, bool]] = [(outputs, False)]
        while stack:
            t, done = stack.pop()
            if done:
                if id(t) not in seen:
                    seen[id(t)] = len(order)
                    order.append(t)
                continue
            if id(t) in seen:
                continue
            stack.append((t, True))
            for u in reversed(t.inputs):
                if id(u) not in seen:
                    stack.append((u, False))
        roots = [t for t in order if t.op == "input"]
        if inputs not in roots:
            raise ValueError(f"outputs: {outputs.origin()} is not reachable from inputs "
                             f"{inputs.origin()} (the input is never used); it depends on "
                             + ", ".join(t.origin() for t in roots))
        if len(roots) > 1:
            raise ValueError(f"outputs: {outputs.origin()} depends on "
                             + ", ".join(t.origin() for t in roots if t is not inputs)
                             + f", an lp.Input other than inputs {inputs.origin()}")
        order.remove(inputs)
        order.insert(0, inputs)
        index = {id(t): i for i, t in enumerate(order)}

        layers: List[Layer] = []        # every layer object, in first-use order
        layer_ids: set = set()
        core_index: Dict[int, int] = {}  # layer with parameters or statistics -> core layer
        core_layers: List[_core.LayerSpec] = []
        core_nodes: List[_core.NodeSpec] = []
        for t in order:
            ins = [index[id(u)] for u in t.inputs]
            if t.op == "input":
                core_nodes.append(_core.NodeSpec(kind=NODE_INPUT, width=t.width))
            elif t.op == "add":
                core_nodes.append(_core.NodeSpec(kind=NODE_ADD, inputs=ins, width=t.width))
            elif t.op == "concat":
                core_nodes.append(_core.NodeSpec(kind=NODE_CONCAT, inputs=ins, width=t.width))
            else:
                layer = t.layer
                assert layer is not None  # a "layer" node always has its layer
                if id(layer) not in layer_ids:
                    layer_ids.add(id(layer))
                    layers.append(layer)
                if isinstance(layer, (Linear, _Norm)):
                    if id(layer) not in core_index:
                        core_index[id(layer)] = len(core_layers)
                        core_layers.append(_core_layer_spec(layer))
                    kind = (NODE_LINEAR if isinstance(layer, Linear)
                            else NODE_BATCHNORM if isinstance(layer, BatchNorm1d) else NODE_LAYERNORM)
                    core_nodes.append(_core.NodeSpec(kind=kind, inputs=ins, width=t.width, layer=core_index[id(layer)]))
                elif isinstance(layer, Dropout):
                    core_nodes.append(_core.NodeSpec(kind=NODE_DROPOUT, inputs=ins, width=t.width, p=layer.p))
                elif isinstance(layer, _Activation):
                    core_nodes.append(_core.NodeSpec(kind=NODE_ACT, inputs=ins, width=t.width, act=layer.act_code,
                                                     **layer.core_settings()))  # type: ignore[arg-type]
                else:
                    raise TypeError(f"{layer.describe()}: layer type not supported by the core")
        self._layers = layers
        # The graph in topological order (index 0 is the input, the last is the output); for
        # tools that walk it (lp.explain). Same order as the core's nodes.
        self._order: List[SymbolicTensor] = order
        # Layers the core stores (parameters and/or running statistics), in core order.
        self._core_layers = sorted((l for l in layers if id(l) in core_index), key=lambda l: core_index[id(l)])
        self._input = inputs
        self._output = outputs
        cls = _core.ModelF32 if self.dtype == "float32" else _core.ModelF64
        self._core = cls(core_layers, core_nodes, len(order) - 1)

        # Parameter names: PyTorch state_dict style.
        if names is None:
            names = {}
            counts: Dict[str, int] = {}
            for l in self._core_layers:
                if l.name:
                    names[id(l)] = l.name
                else:
                    kname = type(l).__name__.lower()
                    names[id(l)] = f"{kname}{counts.get(kname, 0)}"
                    counts[kname] = counts.get(kname, 0) + 1
        used = [names[id(l)] for l in self._core_layers]
        if len(set(used)) != len(used):
            raise ValueError(f"name: layer names must be unique, got {used}")
        self._param_names: List[str] = [f"{used[li]}.{pname}" for li, pname, _o, _s in self._core.tensors()]
        self._buffer_names: List[str] = [f"{used[li]}.{bname}" for li, bname, _o, _s in self._core.buffer_tensors()]
        self._layer_prefix: Dict[int, str] = {id(l): used[i] for i, l in enumerate(self._core_layers)}
        self._params = OrderedDict((n, self._core.param_view(i)) for i, n in enumerate(self._param_names))
        self._grads = OrderedDict((n, self._core.grad_view(i)) for i, n in enumerate(self._param_names))
        self._buffers = OrderedDict((n, self._core.buffer_view(i)) for i, n in enumerate(self._buffer_names))
        self.training = True
        self.loss: Optional[str] = None
        self.optimizer: Optional[Optimizer] = None
        self.schedule: Schedule = Simultaneous()
        self.clip_grad_norm: Optional[float] = None
        self.clip_grad_value: Optional[float] = None
        self.stop_training = False
        self._fit_rng = np.random.default_rng(self.seed)
        self.reset_parameters(self.seed)
        self._core.set_seed(int(np.random.default_rng(self.seed).integers(2**63)) ^ 0x5EED)

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """PyTorch's default initialization: Linear weight and bias uniform in +-1/sqrt(fan_in)
        (kaiming_uniform with a=sqrt(5)), drawn per layer, weight first, from `seed`; norm
        layers weight 1, bias 0, running mean 0, running variance 1."""
        rng = np.random.default_rng(seed)
        for (layer_idx, _pname, _o, _shape), view in zip(self._core.tensors(), self._params.values()):
            layer = self._core_layers[layer_idx]
            if isinstance(layer, Linear):
                bound = layer.init_bound()
                view[...] = rng.uniform(-bound, bound, size=view.shape).astype(self._np_dtype)
            else:
                view[...] = 1.0 if _pname == "weight" else 0.0
        for (_li, bname, _o, _shape), view in zip(self._core.buffer_tensors(), self._buffers.values()):
            view[...] = 1.0 if bname == "running_var" else 0.0

    # ------------------------------------------------------------------ properties
    @property
    def in_features(self) -> int:
        return int(self._core.in_features)

    @property
    def out_features(self) -> int:
        return int(self._core.out_features)

    @property
    def layers(self) -> List[Layer]:
        return list(self._layers)

    def parameters(self) -> "OrderedDict[str, np.ndarray]":
        """Ordered, zero-copy, writable views of the parameters (PyTorch state_dict names)."""
        return OrderedDict(self._params)

    def gradients(self) -> "OrderedDict[str, np.ndarray]":
        """Zero-copy views of the last computed gradients."""
        return OrderedDict(self._grads)

    def buffers(self) -> "OrderedDict[str, np.ndarray]":
        """Zero-copy, writable views of the state that is not trained by gradients: BatchNorm1d
        running statistics ("1.running_mean", "1.running_var"), named like PyTorch's state_dict."""
        return OrderedDict(self._buffers)

    def step_cost(self) -> Dict[str, int]:
        """Work of the last training step: node forward and backward executions (a Linear with
        its fused activation counts once). Compare schedules with it."""
        fwd, bwd = self._core.last_ops()
        return {"forward": int(fwd), "backward": int(bwd)}

    def num_parameters(self) -> int:
        return int(self._core.num_params)

    def train(self) -> "Model":
        """Training mode (the default): train_step, compute_gradients, loss_and_grads and
        fit apply dropout. predict and evaluate always run in inference mode."""
        self.training = True
        self._core.training = True
        return self

    def eval(self) -> "Model":
        """Evaluation mode: the training calls run dropout as the identity too (useful for
        gradient checks)."""
        self.training = False
        self._core.training = False
        return self

    # ------------------------------------------------------------------ compile
    def compile(self, loss: str = "cross_entropy", optimizer: Optional[Optimizer] = None,
                schedule: Optional[Schedule] = None, *, clip_grad_norm: Optional[float] = None,
                clip_grad_value: Optional[float] = None) -> "Model":
        """Choose the loss, the optimizer (default SGD(lr=0.01)) and the update schedule.
        Compiling again resets the optimizer state. Losses: "cross_entropy" (integer labels),
        "mse", "bce_with_logits", "poisson" (outputs are log rates; targets >= 0; PyTorch's
        PoissonNLLLoss(log_input=True)); each the mean over the batch (weighted with
        sample_weight).

        clip_grad_value / clip_grad_norm: gradient clipping inside the core before every update
        (Simultaneous schedule), PyTorch's rules: every gradient element clamped to
        [-clip_grad_value, clip_grad_value] (Tensor.clamp_), then all gradients scaled by
        min(1, clip_grad_norm / (total 2-norm + 1e-6)) (torch.nn.utils.clip_grad_norm_)."""
        from .optim import SGD
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got {loss!r}")
        if optimizer is None:
            optimizer = SGD(lr=0.01)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an lp optimizer (lp.SGD, lp.Adam, lp.AdamW, lp.RMSprop, lp.Adagrad), "
                            f"got {type(optimizer).__name__}")
        if schedule is None:
            schedule = Simultaneous()
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule: expected an lp schedule (lp.Simultaneous(), lp.Layerwise(), "
                            f"lp.LocoProp()), got {schedule!r}")
        clip: Dict[str, Optional[float]] = {}
        for name, v in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value)):
            if v is None:
                clip[name] = None
                continue
            ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            if not ok or not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a finite number > 0 or None, got {v!r}")
            clip[name] = float(v)
        if (clip["clip_grad_norm"] or clip["clip_grad_value"]) and not isinstance(schedule, Simultaneous):
            raise ValueError("clip_grad_norm / clip_grad_value: gradient clipping applies to the Simultaneous "
                             f"schedule, not {schedule!r} (its layers step on their own recomputed gradients)")
        self._core.compile(loss=LOSSES[loss], **optimizer.core_args(), **schedule.core_args(),
                           clip_norm=clip["clip_grad_norm"] or 0.0, clip_value=clip["clip_grad_value"] or 0.0)
        self.loss, self.optimizer, self.schedule = loss, optimizer, schedule
        self.clip_grad_norm, self.clip_grad_value = clip["clip_grad_norm"], clip["clip_grad_value"]
        return self

    def _require_compiled(self) -> None:
        if self.loss is None:
            raise RuntimeError("the model is not compiled: call model.compile(loss=..., optimizer=...) first")

    # ------------------------------------------------------------------ data
    def _as_X(self, X: object, name: str = "X") -> np.ndarray:
        """The model's dtype, C-contiguous. float64 data for a float32 model is converted here,
        once per call (documented); any other dtype is refused with a TypeError."""
        arr = X if isinstance(X, np.ndarray) else np.asarray(X)
        if arr.dtype != self._np_dtype:
            if self._np_dtype is np.float32 and arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            else:
                raise TypeError(f"{name}: expected dtype {self.dtype}"
                                + (" (or float64, converted once)" if self.dtype == "float32" else "")
                                + f", got {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D array (samples, features), got shape {arr.shape}")
        return np.ascontiguousarray(arr)

    def _as_y(self, y: object, n: int, name: str = "y") -> np.ndarray:
        self._require_compiled()
        arr = y if isinstance(y, np.ndarray) else np.asarray(y)
        if self.loss == "cross_entropy":
            if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"{name}: cross_entropy expects integer class labels, got dtype {arr.dtype}")
            if arr.ndim != 1:
                raise ValueError(f"{name}: expected shape ({n},) of class labels, got {arr.shape}")
            return np.ascontiguousarray(arr, dtype=np.int64)
        if arr.dtype != self._np_dtype:
            if self._np_dtype is np.float32 and arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            else:
                raise TypeError(f"{name}: expected dtype {self.dtype} targets, got {arr.dtype}")
        if arr.ndim == 1 and self.out_features == 1:
            arr = arr.reshape(-1, 1)
        return np.ascontiguousarray(arr)

    def _Xy(self, X: object, y: object) -> Tuple[np.ndarray, np.ndarray]:
        self._require_compiled()
        # Fast path: arrays already as the core wants them go straight through (the core
        # checks shapes, labels and NaN/Inf itself).
        if (type(X) is np.ndarray and type(y) is np.ndarray and X.dtype == self._np_dtype
                and X.flags.c_contiguous and y.flags.c_contiguous and X.ndim == 2
                and (y.dtype == np.int64 and y.ndim == 1 if self.loss == "cross_entropy"
                     else y.dtype == self._np_dtype and y.ndim == 2)):
            return X, y
        Xa = self._as_X(X)
        return Xa, self._as_y(y, Xa.shape[0])

    # ------------------------------------------------------------------ steps
    def _as_weights(self, w: object, n: int) -> Optional[np.ndarray]:
        """sample_weight as the model's dtype, (n,), C-contiguous (a copy when it must be
        converted: weights are only read). Values (finite, >= 0, a positive sum per batch)
        are checked by the core."""
        if w is None:
            return None
        a = w if isinstance(w, np.ndarray) else np.asarray(w)
        if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise TypeError(f"sample_weight: expected real numbers, got dtype {a.dtype}")
        if a.shape != (n,):
            raise ValueError(f"sample_weight: expected shape ({n},), got {a.shape}")
        return np.ascontiguousarray(a, dtype=self._np_dtype)

    def train_step(self, X: np.ndarray, y: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> float:
        """One fused forward + backward + update; returns the loss before the update.
        sample_weight (n,): the loss is the weighted mean sum(w_i l_i) / sum(w_i)."""
        if sample_weight is None:
            try:  # arrays the core accepts as they are go straight in (it validates everything)
                return self._core.train_step(X, y)  # type: ignore[no-any-return]
            except (TypeError, ValueError):
                pass  # convert what Python converts (documented), or raise the precise error
        Xa, ya = self._Xy(X, y)
        return float(self._core.train_step(Xa, ya, self._as_weights(sample_weight, Xa.shape[0])))

    def compute_gradients(self, X: np.ndarray, y: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> float:
        """Forward and backward only: fills gradients(); returns the loss."""
        Xa, ya = self._Xy(X, y)
        return float(self._core.compute_gradients(Xa, ya, sample_weight=self._as_weights(sample_weight, Xa.shape[0])))

    def apply_gradients(self) -> None:
        """Update the parameters with the gradients of the last compute_gradients."""
        self._require_compiled()
        self._core.apply_gradients()

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray,
                       sample_weight: Optional[np.ndarray] = None) -> Tuple[float, Dict[str, np.ndarray]]:
        """Loss and a copy of every gradient; no update (parameters, optimizer state and
        BatchNorm running statistics stay as they are)."""
        Xa, ya = self._Xy(X, y)
        loss = float(self._core.compute_gradients(Xa, ya, update_stats=False,
                                                  sample_weight=self._as_weights(sample_weight, Xa.shape[0])))
        return loss, OrderedDict((n, g.copy()) for n, g in self._grads.items())

    def predict(self, X: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Raw outputs (logits for cross_entropy) for every row of X."""
        Xa = self._as_X(X)
        bs = 0 if batch_size is None else _positive_int(batch_size, "batch_size")
        return self._core.predict(Xa, bs)

    def evaluate(self, X: np.ndarray, y: np.ndarray, batch_size: Optional[int] = None,
                 sample_weight: Optional[np.ndarray] = None) -> Dict[str, float]:
        """{"loss": mean loss} and, for cross_entropy, "accuracy" (both weighted by
        sample_weight when given)."""
        Xa, ya = self._Xy(X, y)
        bs = 0 if batch_size is None else _positive_int(batch_size, "batch_size")
        loss, correct, total = self._core.evaluate(Xa, ya, bs, self._as_weights(sample_weight, Xa.shape[0]))
        out = {"loss": float(loss)}
        if self.loss == "cross_entropy":
            out["accuracy"] = float(correct) / float(total)
        return out

    def fit(self, X: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
            shuffle: bool = True, validation_data: Optional[Tuple[np.ndarray, np.ndarray]] = None,
            callbacks: Sequence[object] = (), progress: Optional[bool] = None,
            initial_epoch: int = 0, on_nonfinite: str = "raise", sample_weight: Optional[np.ndarray] = None):
        """Train for `epochs` passes over (X, y) in batches (the last one may be partial);
        returns a History. Shuffling uses the model's seed, so runs are reproducible.
        initial_epoch: continue a run (Keras' convention: epochs initial_epoch..epochs-1 run).

        Every argument (the data and validation_data included: shapes, labels, NaN/Inf) is
        checked before the first step, so a refused fit changes nothing. Every step is guarded:
        a step whose loss or gradient is not finite is not applied. on_nonfinite says what
        follows: "raise" (lp.NonFiniteError, the model as after the last good step), "stop"
        (a RuntimeWarning, and fit returns the History so far) or "skip" (the batch is skipped;
        the epoch's logs count them in "nonfinite_batches").

        sample_weight (n,): each batch's loss is its weighted mean (scikit-learn's and
        PyTorch's reduction: sum(w_i l_i) / sum(w_i)); every batch needs a positive total."""
        from .training import run_fit
        return run_fit(self, X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                       validation_data=validation_data, callbacks=callbacks,  # type: ignore[arg-type]
                       progress=progress, initial_epoch=initial_epoch, on_nonfinite=on_nonfinite,
                       sample_weight=sample_weight)

    def save(self, path: str, include_optimizer: bool = True) -> None:
        """Write the model to a safetensors file (see lp.load and layerprop.io)."""
        from .io import save
        save(self, path, include_optimizer=include_optimizer)

    def to_onnx(self, path: str) -> None:
        """Write the model as an ONNX file for inference (the `onnx` extra): onnxruntime runs
        it with the same outputs as predict, to float32 rounding (see layerprop.export)."""
        from .export import to_onnx
        to_onnx(self, path)

    def to_torch(self):
        """A torch.nn.Sequential copy of this Sequential model (see layerprop.interop)."""
        from .interop import to_torch
        return to_torch(self)

    # ------------------------------------------------------------------ description
    def summary(self) -> str:
        """A table of the layers, their output widths and parameter counts."""
        rows = [("layer", "output", "params")]
        for layer in self._layers:
            count = ""
            if id(layer) in self._layer_prefix:
                count = str(self._layer_param_count(layer))
                label = f"{self._layer_prefix[id(layer)]}: {layer.describe()}"
            else:
                label = layer.describe()
            width = (layer.out_features if isinstance(layer, Linear)
                     else layer.num_features if isinstance(layer, _Norm) else "")
            rows.append((label, f"(N, {width})" if width != "" else "", count))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{type(self).__name__} (dtype={self.dtype}, input features={self.in_features})"]
        for r in rows:
            lines.append(f"  {r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:>8}")
        lines.append(f"Total parameters: {self.num_parameters()}")
        return "\n".join(lines)

    def _layer_param_count(self, layer: Layer) -> int:
        li = self._core_layers.index(layer)
        return sum(int(np.prod(shape)) for lj, _n, _o, shape in self._core.tensors() if lj == li)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.in_features}->{self.out_features} dtype={self.dtype} params={self.num_parameters()}>"


def _core_layer_spec(layer: Layer) -> "_core.LayerSpec":
    """The core's spec of a layer it stores."""
    if isinstance(layer, Linear):
        return _core.LayerSpec(kind=LAYER_LINEAR, in_features=layer.in_features, out_features=layer.out_features,
                               bias=layer.bias, eps=0.0, momentum=0.0)
    if isinstance(layer, BatchNorm1d):
        return _core.LayerSpec(kind=LAYER_BATCHNORM, in_features=layer.num_features, out_features=layer.num_features,
                               bias=layer.affine, eps=layer.eps, momentum=layer.momentum)
    assert isinstance(layer, LayerNorm)
    return _core.LayerSpec(kind=LAYER_LAYERNORM, in_features=layer.num_features, out_features=layer.num_features,
                           bias=True, eps=layer.eps, momentum=0.0)


def _positive_float(v: object, name: str, what: str = "a positive number") -> float:
    """A finite number > 0 (bools refused), or ValueError naming the argument."""
    try:
        f = float(v) if not isinstance(v, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = math.nan
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return f


def _positive_int(v: object, name: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return int(v)


class Sequential(Model):
    """Layers applied one after another; parameter names follow PyTorch's nn.Sequential
    ("0.weight", "0.bias", "2.weight", ...)."""

    def __init__(self, *layers: Layer, dtype: str = "float32", seed: Optional[int] = None) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("layers: a Sequential needs at least one layer")
        for i, l in enumerate(layers):
            if not isinstance(l, Layer):
                raise TypeError(f"layers[{i}]: expected an lp layer, got {type(l).__name__}")
        seen: Dict[int, int] = {}
        for i, l in enumerate(layers):
            if seen.setdefault(id(l), i) != i:
                raise ValueError(f"layers[{i}]: the same layer object appears twice; use the functional API to share weights")
        first = next((l for l in layers if isinstance(l, (Linear, _Norm))), None)
        if first is None or not any(isinstance(l, Linear) for l in layers):
            raise ValueError("layers: a Sequential needs at least one lp.Linear")
        # Width of the input: the first sized layer's (activations before it keep width).
        x = Input(first.in_features if isinstance(first, Linear) else first.num_features)
        t = x
        for l in layers:
            t = l(t)
        self._seq_layers = list(layers)
        names = {id(l): (l.name or str(i)) for i, l in enumerate(layers)}
        self._init_graph(x, t, dtype, seed, names=names)

    def summary(self) -> str:
        rows = [("#", "layer", "output", "params")]
        width = self.in_features
        for i, l in enumerate(self._seq_layers):
            width = l.out_width(width)
            cnt = self._layer_param_count(l) if id(l) in self._layer_prefix else 0
            rows.append((str(i), l.describe(), f"(N, {width})", str(cnt)))
        ws = [max(len(r[k]) for r in rows) for k in range(4)]
        lines = [f"Sequential (dtype={self.dtype}, input features={self.in_features})"]
        for r in rows:
            lines.append(f"  {r[0]:>{ws[0]}}  {r[1]:<{ws[1]}}  {r[2]:<{ws[2]}}  {r[3]:>{ws[3]}}")
        lines.append(f"Total parameters: {self.num_parameters()}")
        return "\n".join(lines)
