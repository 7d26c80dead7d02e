"""Model and Sequential: a graph of layers handed to the C++ core once, then trained,
evaluated and inspected through it."""
from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _core
from . import validation as V
from ._codes import LOSS, NODE
from .layers import Input, Layer, Linear, SymbolicTensor, _Norm
from .optim import Optimizer
from .schedules import Schedule, Simultaneous
from .sparse import CsrRows, as_csr_rows, is_sparse

__all__ = ["Model", "Sequential"]

LOSSES = {"cross_entropy": LOSS["CrossEntropy"], "mse": LOSS["MSE"], "bce_with_logits": LOSS["BCEWithLogits"],
          "poisson": LOSS["Poisson"]}
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
    """A graph of layers from `inputs` to `outputs` (see lp.Input, lp.add, lp.concat).

    Internal API: the other modules of the package (training, io, explain, sklearn, ...) use a
    Model through its public methods and the single-underscore methods listed in
    `INTERNAL_API`, never through its underscore attributes (tests/test_internal_api.py checks
    this by reading the source)."""

    INTERNAL_API = ("_from_graph", "_prepare", "_prepare_weights", "_require_compiled",
                    "_validate", "_train_batches", "_evaluate_prepared", "_shuffled_order",
                    "_reseed_dropout", "_loss", "_snapshot", "_optimizer_state_names", "_optimizer_state_nonneg",
                    "_apply_penalized", "_distributed", "_dist_attach", "_dist_sync", "_train_step_prepared")

    def __init__(self, inputs: SymbolicTensor, outputs: SymbolicTensor, dtype: str = "float32",
                 seed: Optional[int] = None) -> None:
        self._init_graph(inputs, outputs, dtype, seed)

    @classmethod
    def _from_graph(cls, inputs: SymbolicTensor, outputs: SymbolicTensor, dtype: object = "float32",
                    seed: Optional[int] = None, names: Optional[Dict[int, str]] = None) -> "Model":
        """A Model of the graph from `inputs` to `outputs`; `names`: id(layer) -> the name
        prefix of its parameters (default: the layer's name, or "<kind><index>")."""
        model = Model.__new__(Model)
        model._init_graph(inputs, outputs, dtype, seed, names=names)
        return model

    # ------------------------------------------------------------------ construction
    def _init_graph(self, inputs: SymbolicTensor, outputs: SymbolicTensor, dtype: object,
                    seed: Optional[int], names: Optional[Dict[int, str]] = None) -> None:
        self.dtype = _dtype_name(dtype)
        self._np_dtype = _DTYPES[self.dtype]
        self._np_dtype_obj = np.dtype(self._np_dtype)
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
        if seed is not None and not V.is_int(seed):
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
                core_nodes.append(_core.NodeSpec(kind=NODE["Input"], width=t.width))
            elif t.op == "add":
                core_nodes.append(_core.NodeSpec(kind=NODE["Add"], inputs=ins, width=t.width))
            elif t.op == "concat":
                core_nodes.append(_core.NodeSpec(kind=NODE["Concat"], inputs=ins, width=t.width))
            else:
                layer = t.layer
                assert layer is not None  # a "layer" node always has its layer
                if id(layer) not in layer_ids:
                    layer_ids.add(id(layer))
                    layers.append(layer)
                stored = -1
                if layer.stored:
                    if id(layer) not in core_index:
                        core_index[id(layer)] = len(core_layers)
                        core_layers.append(layer.core_layer())
                    stored = core_index[id(layer)]
                core_nodes.append(layer.core_node(ins, t.width, stored))
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
        # The only persistent references to the parameter views: `_params` hands them out (and
        # notes that they may be written), `_cache_token` counts who else holds them.
        self._param_views = OrderedDict((n, self._core.param_view(i)) for i, n in enumerate(self._param_names))
        self._view_refs = self._param_view_refs()
        self._param_count = sum(int(v.size) for v in self._param_views.values())
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
        self._dist: Any = None  # lp.distributed's Context while training is data-parallel
        self._y_dtype: Optional[np.dtype] = None  # set by compile: the targets' dtype and ndim
        self._y_ndim = 0
        self.reset_parameters(self.seed)
        self._core.set_seed(int(np.random.default_rng(self.seed).integers(2**63)) ^ 0x5EED)

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """PyTorch's default initialization: Linear weight and bias uniform in +-1/sqrt(fan_in)
        (kaiming_uniform with a=sqrt(5)), drawn per layer, weight first, from `seed`; norm
        layers weight 1, bias 0, running mean 0, running variance 1."""
        rng = np.random.default_rng(seed)
        for (layer_idx, pname, _o, _shape), view in zip(self._core.tensors(), self._params.values()):
            self._core_layers[layer_idx].init_tensor(pname, view, rng)
        for (layer_idx, bname, _o, _shape), view in zip(self._core.buffer_tensors(), self._buffers.values()):
            self._core_layers[layer_idx].init_buffer(bname, view)

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

    @property
    def _params(self) -> "OrderedDict[str, np.ndarray]":
        # Whoever gets the views may write through them: the core's parameter version moves on
        # first, so weights that predict kept packed are not used again.
        self._core.params_changed()
        return self._param_views

    def _param_view_refs(self) -> List[int]:
        return [sys.getrefcount(v) for v in self._param_views.values()]

    def _cache_token(self, rows: int) -> int:
        """The core's parameter version if no view of the parameters is held outside the model
        (so none can be written without the version moving on: see _params), else 0. A view
        taken from one (a slice, np.asarray, a memoryview, torch.from_numpy) holds a reference
        to it. The version is read first: a view handed out after it makes it stale.
        A call under 128 rows whose rows times parameters (about its multiply-adds) stay under
        2^22 is small enough that the check (about 1 us) would cost more than kept weights could
        save: 0. (Batch 16 of a 784-512-512-10 model has 10.7M and keeps them.)"""
        if rows < 128 and rows * self._param_count < (1 << 22):
            return 0
        version = int(self._core.param_version())
        return version if self._param_view_refs() == self._view_refs else 0

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

    @property
    def nodes(self) -> List[SymbolicTensor]:
        """The graph in topological order: index 0 is the input, the last is the output (the
        core's node order)."""
        return list(self._order)

    def layer_name(self, layer: Layer) -> Optional[str]:
        """The name prefix of `layer`'s parameters and buffers ("0", "enc", "linear1"), or None
        for a layer the core stores nothing for (activations, dropout) or not in this model."""
        return self._layer_prefix.get(id(layer))

    def clone(self, dtype: Optional[str] = None) -> "Model":
        """A copy of this model in `dtype` (default: its own): the same graph (the same layer
        objects), copies of the parameters and buffers, the same mode and random generators;
        not compiled."""
        dt = self.dtype if dtype is None else _dtype_name(dtype)
        twin: Model
        if isinstance(self, Sequential):
            twin = Sequential(*self._seq_layers, dtype=dt, seed=self.seed)
        else:
            twin = Model._from_graph(self._input, self._output, dt, self.seed, names=dict(self._layer_prefix))
        if twin._param_names != self._param_names or twin._buffer_names != self._buffer_names:
            raise RuntimeError(f"clone: the copy's tensors {twin._param_names + twin._buffer_names} differ "
                               f"from the model's {self._param_names + self._buffer_names}")
        for name, p in self._params.items():
            twin._params[name][...] = p
        for name, b in self._buffers.items():
            twin._buffers[name][...] = b
        twin.rng_state = self.rng_state
        return twin.train() if self.training else twin.eval()

    # ------------------------------------------------------------------ state
    @property
    def rng_state(self) -> Dict[str, Any]:
        """The random generators: {"shuffle": fit's shuffling generator (NumPy
        bit_generator.state), "core": (seed, draws) of the core's dropout generator}. Assign
        such a dict (either key may be left out or None) to restore them."""
        seed, draws = self._core.rng_state()
        return {"shuffle": self._fit_rng.bit_generator.state, "core": (int(seed), int(draws))}

    @rng_state.setter
    def rng_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or not set(state) <= {"shuffle", "core"}:
            raise ValueError(f"rng_state: expected a dict with the keys 'shuffle' and 'core', got {state!r:.200}")
        core = state.get("core")
        if core is not None:
            if not isinstance(core, (tuple, list)) or len(core) != 2:
                raise ValueError(f"rng_state['core']: expected (seed, draws), got {core!r:.200}")
            core = (V.integer(core[0], "rng_state['core'][0]", 0, 2 ** 64 - 1),
                    V.integer(core[1], "rng_state['core'][1]", 0, 2 ** 64 - 1))
        shuffle = state.get("shuffle")
        if shuffle is not None:
            bg = self._fit_rng.bit_generator
            if not isinstance(shuffle, Mapping) or shuffle.get("bit_generator") != type(bg).__name__:
                raise ValueError(f"rng_state['shuffle']: expected the state of a {type(bg).__name__} "
                                 f"bit generator, got {shuffle!r:.200}")
            try:
                bg.state = dict(shuffle)
            except (TypeError, ValueError, KeyError, OverflowError) as e:
                raise ValueError(f"rng_state['shuffle']: {e}") from None
        if core is not None:
            self._core.set_rng_state(*core)

    def _optimizer_state_names(self) -> Tuple[str, ...]:
        """Names of the state tensors the compiled optimizer keeps per parameter (the core's
        slots 0, 1, ... in order): e.g. ("exp_avg", "exp_avg_sq") for Adam, () before compile."""
        if self.optimizer is None:
            return ()
        return tuple(self._core.state_names())

    def _optimizer_state_nonneg(self) -> Tuple[bool, ...]:
        """For each state slot: True when its values are never negative (second moments, sums
        of squares); what a loaded file is checked against."""
        if self.optimizer is None:
            return ()
        return tuple(bool(v) for v in self._core.state_nonneg())

    def _snapshot(self) -> Dict[str, Any]:
        """One consistent copy of the model's state, taken under the core's lock (a fit in
        another thread cannot interleave a step): {"params", "buffers": name -> array,
        "optimizer": param name -> {"step": int, <state name>: array} (empty before compile),
        "rng": as rng_state}."""
        snap = self._core.snapshot()

        def named(flat: np.ndarray, infos: List[Tuple[int, str, int, Tuple[int, ...]]],
                  names: List[str]) -> "OrderedDict[str, np.ndarray]":
            return OrderedDict((name, flat[off: off + int(np.prod(shape))].reshape(shape))
                               for (_l, _n, off, shape), name in zip(infos, names))
        infos = self._core.tensors()
        params = named(snap["params"], infos, self._param_names)
        buffers = named(snap["buffers"], self._core.buffer_tensors(), self._buffer_names)
        optimizer: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        if self.optimizer is not None:
            slots = [named(snap[f"state{k}"], infos, self._param_names)
                     for k in range(len(self._optimizer_state_names()))]
            state_names = self._optimizer_state_names()
            for i, name in enumerate(self._param_names):
                entry: Dict[str, Any] = {"step": int(snap["steps"][i])}
                for sname, slot in zip(state_names, slots):
                    entry[sname] = slot[name]
                optimizer[name] = entry
        seed, draws = (int(v) for v in snap["rng"])
        return {"params": params, "buffers": buffers, "optimizer": optimizer,
                "rng": {"shuffle": self._fit_rng.bit_generator.state, "core": (seed, draws)}}

    def optimizer_state(self) -> "OrderedDict[str, Dict[str, Any]]":
        """The optimizer's state, named per parameter as in PyTorch's optimizer.state_dict():
        {"0.weight": {"step": 3, "exp_avg": array, "exp_avg_sq": array}, ...} (copies; SGD keeps
        "momentum_buffer" when momentum > 0). Empty before compile."""
        return self._snapshot()["optimizer"]

    def load_optimizer_state(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore what optimizer_state() returned (for the same architecture and optimizer):
        every parameter's step count and state tensors, checked by name and shape."""
        self._require_compiled()
        names = self._optimizer_state_names()
        if not isinstance(state, Mapping) or list(state) != self._param_names:
            got = list(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"state: expected an entry for each of the parameters {self._param_names[:8]}, "
                             f"got {got!r:.200}")
        steps = []
        for pname, view in self._params.items():
            entry = state[pname]
            if not isinstance(entry, Mapping) or set(entry) != {"step", *names}:
                raise ValueError(f"state[{pname!r}]: expected the keys {['step', *names]}, got "
                                 f"{list(entry) if isinstance(entry, Mapping) else entry!r:.200}")
            steps.append(V.integer(entry["step"], f"state[{pname!r}]['step']", 0, 2 ** 40))
            for sname in names:
                a = np.asarray(entry[sname])
                if a.shape != view.shape:
                    raise ValueError(f"state[{pname!r}][{sname!r}]: expected shape {view.shape}, got {a.shape}")
        offsets = {name: (off, int(np.prod(shape)))
                   for (_l, _n, off, shape), name in zip(self._core.tensors(), self._param_names)}
        for k, sname in enumerate(names):
            flat = self._core.state_view(k)
            for pname in self._param_names:
                off, size = offsets[pname]
                flat[off: off + size] = np.asarray(state[pname][sname]).reshape(-1)
        self._core.set_steps(steps)

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
                clip_grad_value: Optional[float] = None, distributed: Any = False) -> "Model":
        """Choose the loss, the optimizer (default SGD(lr=0.01)) and the update schedule.
        Compiling again resets the optimizer state. Losses: "cross_entropy" (integer labels),
        "mse", "bce_with_logits", "poisson" (outputs are log rates; targets >= 0; PyTorch's
        PoissonNLLLoss(log_input=True)); each the mean over the batch (weighted with
        sample_weight).

        clip_grad_value / clip_grad_norm: gradient clipping inside the core before every update
        (Simultaneous schedule), PyTorch's rules: every gradient element clamped to
        [-clip_grad_value, clip_grad_value] (Tensor.clamp_), then all gradients scaled by
        min(1, clip_grad_norm / (total 2-norm + 1e-6)) (torch.nn.utils.clip_grad_norm_).

        distributed: True (MPI.COMM_WORLD) or an mpi4py communicator makes every training call
        data-parallel across the ranks (lp.distributed, docs/distributed.md): gradients are
        averaged over the ranks before each update, so N ranks each given their part of a batch
        match one process given all of it; fit splits every batch over the ranks. The model
        starts from rank 0's parameters."""
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
        clip: Dict[str, Optional[float]] = {
            name: None if v is None else V.positive_float(v, name, "a finite number > 0 or None")
            for name, v in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value))}
        if distributed is not False and distributed is not None:
            from . import distributed as _dist
            _dist.resolve_comm(distributed)  # an ImportError or TypeError before anything changes
        if (clip["clip_grad_norm"] or clip["clip_grad_value"]) and not isinstance(schedule, Simultaneous):
            raise ValueError("clip_grad_norm / clip_grad_value: gradient clipping applies to the Simultaneous "
                             f"schedule, not {schedule!r} (its layers step on their own recomputed gradients)")
        self._core.compile(loss=LOSSES[loss], **optimizer.core_args(), **schedule.core_args(loss, self.out_features),
                           clip_norm=clip["clip_grad_norm"] or 0.0, clip_value=clip["clip_grad_value"] or 0.0)
        self.loss, self.optimizer, self.schedule = loss, optimizer, schedule
        fallbacks = [self._layer_prefix[id(self._core_layers[L])] for L in self._core.schedule_fallbacks()]
        if fallbacks:
            import warnings
            warnings.warn(
                f"LocoProp('M'): the Linear layer(s) {', '.join(fallbacks)} are not followed directly by one "
                "activation (a norm layer, Dropout, add/concat or a second reader comes first), so their "
                "targets fall back to S's pre-activation targets (docs/schedules.md)", UserWarning, stacklevel=2)
        # the targets as the core takes them: int64 labels (N,) or the model's dtype (N, out)
        self._y_dtype = np.dtype(np.int64) if loss == "cross_entropy" else np.dtype(self._np_dtype)
        self._y_ndim = 1 if loss == "cross_entropy" else 2
        self.clip_grad_norm, self.clip_grad_value = clip["clip_grad_norm"], clip["clip_grad_value"]
        from . import distributed as _dist
        if distributed is not False and distributed is not None:
            _dist.attach(self, distributed)
        elif getattr(self, "_dist", None) is not None:
            _dist.detach(self)
        return self

    def _require_compiled(self) -> None:
        if self.loss is None:
            raise RuntimeError("the model is not compiled: call model.compile(loss=..., optimizer=...) first")

    # ------------------------------------------------------------------ data
    def _prepare_X(self, X: object, name: str = "X") -> np.ndarray:
        """X in the model's dtype (any layout). float64 data for a float32 model is converted here,
        once per call (documented); any other dtype is refused with a TypeError. A scipy.sparse
        X becomes CSR rows the core reads without densifying (layerprop.sparse)."""
        if type(X) is np.ndarray and X.dtype is self._np_dtype_obj and X.ndim == 2:
            return X  # as it is (the core copies an array that is not C-contiguous)
        if isinstance(X, CsrRows) or is_sparse(X):
            return as_csr_rows(X, self._np_dtype, name)  # type: ignore[return-value]
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

    def _prepare_y(self, y: object, n: int, name: str = "y") -> np.ndarray:
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

    def _prepare(self, X: object, y: object) -> Tuple[np.ndarray, np.ndarray]:
        """The one preparation of (X, y) before the core, decided by dtype, never by trying
        the core: arrays already in the model's dtypes (int64 labels for cross_entropy) and
        dimensions go straight through, in any layout (the core copies a non-C-contiguous
        array it only reads), and the core checks everything else (shapes, labels, NaN/Inf).
        Otherwise the documented conversions: float64 data for a float32 model, any integer
        labels, a 1-D target for one output; any other dtype is a TypeError naming X or y."""
        if (type(X) is np.ndarray and type(y) is np.ndarray and X.dtype is self._np_dtype_obj
                and y.dtype is self._y_dtype and X.ndim == 2 and y.ndim == self._y_ndim):
            return X, y
        self._require_compiled()
        Xa = self._prepare_X(X)
        return Xa, self._prepare_y(y, Xa.shape[0])

    # ------------------------------------------------------------------ internal API: prepared data
    def _validate(self, X: np.ndarray, y: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> None:
        """The core's full check of prepared data (shapes, labels, NaN/Inf); changes nothing."""
        self._core.validate(X, y, sample_weight)

    def _train_batches(self, X: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int,
                       on_nonfinite: int, sample_weight: Optional[np.ndarray]) -> Tuple[np.ndarray, int, int, int, int]:
        """Train on the batches of prepared (X, y) taken in `order` (int64 row indices), in the
        core without the GIL: (losses, done, skipped, fault_batch, fault_kind). Data-parallel:
        each batch split over the ranks (lp.distributed)."""
        if self._dist is not None:
            from . import distributed as _dist
            return _dist.train_batches(self, X, y, order, batch_size, on_nonfinite, sample_weight)
        return self._core.train_epoch(X, y, order, batch_size, on_nonfinite, sample_weight)  # type: ignore[no-any-return]

    def _evaluate_prepared(self, X: np.ndarray, y: np.ndarray, batch_size: int = 0,
                           sample_weight: Optional[np.ndarray] = None, local: bool = False) -> Tuple[float, float, float]:
        """(loss, correct, total) on prepared data, in inference mode. Data-parallel (unless
        `local`): each rank evaluates its part and the totals are reduced over the ranks."""
        if self._dist is not None and not local:
            from . import distributed as _dist
            return _dist.evaluate(self, X, y, batch_size)
        return self._core.evaluate(X, y, batch_size, sample_weight)  # type: ignore[no-any-return]

    def _train_step_prepared(self, X: Any, y: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> float:
        """One guarded training step on prepared data (data-parallel: collective)."""
        return float(self._core.train_step(X, y, sample_weight))

    def _distributed(self) -> Any:
        """lp.distributed's Context while training is data-parallel, else None."""
        return self._dist

    def _dist_attach(self, ctx: Any) -> None:
        """Route every gradient the core computes through ctx's all-reduce (None: one process)."""
        if ctx is None:
            self._core.set_reducer(None)
        else:
            self._core.set_reducer(ctx._sum, ctx._sum, ctx._bcast)
        self._dist = ctx

    def _dist_sync(self, bcast: Callable[[np.ndarray], None], bcast_object: Callable[[Any], Any],
                   rank_seed: Callable[[int], int]) -> None:
        """Make this model rank 0's: parameters, buffers, optimizer state and step counts
        (bcast: in place), the shuffling generator (bcast_object); the dropout stream from
        rank 0's seed mixed by rank_seed."""
        for arr in self._params.values():
            bcast(arr)
        for arr in self._buffers.values():
            bcast(arr)
        for name in self._optimizer_state_names():
            bcast(self._core.state_view(name))
        steps = np.asarray(self._core.steps(), dtype=np.int64)
        bcast(steps)
        self._core.set_steps([int(v) for v in steps])
        state = bcast_object(self.rng_state)
        seed, draws = state["core"]
        self.rng_state = {"shuffle": state["shuffle"], "core": (rank_seed(int(seed)), int(draws))}

    def _shuffled_order(self, n: int) -> np.ndarray:
        """A permutation of range(n) from fit's shuffling generator: one 64-bit draw from it
        (so it advances, and a saved state continues the same way), then the core's
        Fisher-Yates shuffle seeded with that draw (NumPy's permutation took 21-25 us for
        1,797 rows, 1.5% of a digits epoch)."""
        return _core._permutation(int(n), int(self._fit_rng.integers(0, 2**63)))

    def _reseed_dropout(self, seed: int) -> None:
        """Restart the core's dropout generator from `seed`."""
        self._core.set_seed(seed)

    def _loss(self, X: np.ndarray, y: np.ndarray) -> float:
        """The loss on prepared data in the current mode; no gradient, no update."""
        return float(self._core.loss(X, y))

    # ------------------------------------------------------------------ steps
    def _prepare_weights(self, w: object, n: int) -> Optional[np.ndarray]:
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
        # _prepare's fast path, inlined (a tiny step costs ~2.5 us in all); the core refuses a
        # wrong X shape itself, naming X
        if (sample_weight is None and type(X) is np.ndarray and type(y) is np.ndarray and self._dist is None
                and X.dtype is self._np_dtype_obj and y.dtype is self._y_dtype and y.ndim == self._y_ndim):
            return self._core.train_step(X, y)  # type: ignore[no-any-return]
        if self._dist is not None:
            Xa, ya, wa = self._collective_prepare(X, y, sample_weight, "train_step")
            return float(self._core.train_step(Xa, ya, wa))
        Xa, ya = self._prepare(X, y)
        if sample_weight is None:
            return self._core.train_step(Xa, ya)  # type: ignore[no-any-return]
        return float(self._core.train_step(Xa, ya, self._prepare_weights(sample_weight, Xa.shape[0])))

    def compute_gradients(self, X: np.ndarray, y: np.ndarray, sample_weight: Optional[np.ndarray] = None) -> float:
        """Forward and backward only: fills gradients(); returns the loss. Data-parallel: the
        gradients and loss of the whole batch (every rank's part), the same on every rank."""
        if self._dist is not None:
            Xa, ya, wa = self._collective_prepare(X, y, sample_weight, "compute_gradients")
            return float(self._core.compute_gradients(Xa, ya, sample_weight=wa))
        Xa, ya = self._prepare(X, y)
        return float(self._core.compute_gradients(Xa, ya, sample_weight=self._prepare_weights(sample_weight, Xa.shape[0])))

    def _collective_prepare(self, X: object, y: object, sample_weight: object, what: str):
        """Data-parallel: prepare and fully check this rank's part, then agree with the other
        ranks; if any rank's part is refused, every rank raises before the collective step."""
        from . import distributed as _dist
        err: Optional[BaseException] = None
        Xa = ya = wa = None
        try:
            Xa, ya = self._prepare(X, y)
            wa = self._prepare_weights(sample_weight, Xa.shape[0])
            self._validate(Xa, ya, wa)
        except (ValueError, TypeError, RuntimeError, MemoryError) as e:
            err = e
        _dist.agree(self._dist, err, what)
        return Xa, ya, wa

    def apply_gradients(self) -> None:
        """Update the parameters with the gradients of the last compute_gradients."""
        self._require_compiled()
        self._core.apply_gradients()

    def _apply_penalized(self, l2_weights: float, grad_scale: float = 1.0) -> None:
        """apply_gradients with the gradients first multiplied by grad_scale and l2_weights * W
        added to every Linear weight's (not the biases'), in the optimizer's own pass
        (scikit-learn's alpha penalty, for lp.sklearn)."""
        self._require_compiled()
        self._core.apply_gradients(l2_weights=l2_weights, grad_scale=grad_scale)

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray,
                       sample_weight: Optional[np.ndarray] = None) -> Tuple[float, Dict[str, np.ndarray]]:
        """Loss and a copy of every gradient; no update (parameters, optimizer state and
        BatchNorm running statistics stay as they are)."""
        if self._dist is not None:
            Xa, ya, wa = self._collective_prepare(X, y, sample_weight, "loss_and_grads")
            loss = float(self._core.compute_gradients(Xa, ya, update_stats=False, sample_weight=wa))
            return loss, OrderedDict((n, g.copy()) for n, g in self._grads.items())
        Xa, ya = self._prepare(X, y)
        loss = float(self._core.compute_gradients(Xa, ya, update_stats=False,
                                                  sample_weight=self._prepare_weights(sample_weight, Xa.shape[0])))
        return loss, OrderedDict((n, g.copy()) for n, g in self._grads.items())

    def predict(self, X: np.ndarray, batch_size: Optional[int] = None) -> np.ndarray:
        """Raw outputs (logits for cross_entropy) for every row of X."""
        Xa = self._prepare_X(X)
        bs = 0 if batch_size is None else V.positive_int(batch_size, "batch_size")
        return self._core.predict(Xa, bs, self._cache_token(Xa.shape[0]))

    def evaluate(self, X: np.ndarray, y: np.ndarray, batch_size: Optional[int] = None,
                 sample_weight: Optional[np.ndarray] = None) -> Dict[str, float]:
        """{"loss": mean loss} and, for cross_entropy, "accuracy" (both weighted by
        sample_weight when given)."""
        Xa, ya = self._prepare(X, y)
        bs = 0 if batch_size is None else V.positive_int(batch_size, "batch_size")
        loss, correct, total = self._core.evaluate(Xa, ya, bs, self._prepare_weights(sample_weight, Xa.shape[0]),
                                                   self._cache_token(Xa.shape[0]))
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
        first = next((l.input_width for l in layers if l.input_width is not None), None)
        if first is None or not any(isinstance(l, Linear) for l in layers):
            raise ValueError("layers: a Sequential needs at least one lp.Linear")
        # Width of the input: the first sized layer's (activations before it keep width).
        x = Input(first)
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
