"""Instruments that explain the gradient: is backprop right, where does it come from, why is
-grad a good step, and how far does a layer's gradient move once the others have stepped.

Every tool works on a float64 *twin* of the model (same graph, same layer names, parameters
copied; a float32 model's parameters are widened exactly), compiled with the model's loss.
The model itself is never touched: its parameters, gradients, optimizer state, mode and
dropout stream are the same after every call as before.

- `gradcheck`: central finite differences against backprop, per parameter.
- `path_gradients`: every path from one weight entry to the loss, the product of the local
  derivatives along each, their sum, and backprop's value beside it.
- `taylor_check`: the first-order loss change predicted by the gradient against the actual one.
- `moving_target`: per layer, how its gradient moves once the other layers take their step,
  and how far the mean and variance of its input drift with that step.

Dropout: `gradcheck`, `taylor_check` and `moving_target` follow the model's mode
(`model.train()` / `model.eval()`); in training mode every loss evaluation of one call reuses
one fixed dropout mask, so the loss is a deterministic function of the parameters.
`path_gradients` always runs with dropout off (the identity), the mode of `model.eval()`.
BatchNorm1d follows the model's mode too: batch statistics in training mode, the model's running
statistics (copied to the twin) in evaluation mode.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .layers import (ELU, GELU, BatchNorm1d, Dropout, Identity, LayerNorm, LeakyReLU, Linear, ReLU,
                     Sigmoid, SiLU, Softplus, SymbolicTensor, Tanh, _Norm)
from .model import Model, _positive_float

__all__ = [
    "gradcheck", "path_gradients", "taylor_check", "moving_target",
    "GradcheckReport", "ParamCheck", "PathReport", "Path", "TaylorReport", "TaylorStep",
    "MovingTargetReport", "LayerMove",
]

_MASK_SEED = 0x5EED  # dropout mask of every loss evaluation inside one explain call


# ---------------------------------------------------------------------------------- twin
class _Twin:
    """A float64 copy of a compiled model; every evaluation reuses one dropout mask."""

    def __init__(self, model: Model, X: object, y: object, training: Optional[bool] = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model: expected an lp.Model or lp.Sequential, got {type(model).__name__}")
        model._require_compiled()
        # Validate (and convert) the data exactly as fit does (shapes, labels, NaN/Inf, through
        # the core) before any NumPy arithmetic touches it, then widen it.
        from .training import validated_data
        Xm, ym = validated_data(model, X, y)
        self.X = np.ascontiguousarray(Xm, dtype=np.float64)
        self.y = ym if ym.dtype == np.int64 else np.ascontiguousarray(ym, dtype=np.float64)
        order = model._order
        twin = Model.__new__(Model)
        twin._init_graph(order[0], order[-1], "float64", model.seed, names=dict(model._layer_prefix))
        if twin._param_names != model._param_names:  # same graph, same names: a broken invariant
            raise RuntimeError(f"explain: the float64 twin's parameters {twin._param_names} differ "
                               f"from the model's {model._param_names}")
        for name, p in model.parameters().items():
            twin._params[name][...] = p
        if twin._buffer_names != model._buffer_names:
            raise RuntimeError(f"explain: the float64 twin's buffers {twin._buffer_names} differ "
                               f"from the model's {model._buffer_names}")
        for name, b in model.buffers().items():  # BatchNorm1d running statistics (eval mode)
            twin._buffers[name][...] = b
        assert model.loss is not None  # checked by the caller (_require_compiled)
        twin.compile(loss=model.loss, optimizer=model.optimizer)
        if training is None:
            training = model.training
        twin.train() if training else twin.eval()
        self.model = twin
        self.source = model
        self.params = twin._params  # zero-copy views into the twin

    def loss(self) -> float:
        self.model._core.set_seed(_MASK_SEED)
        return float(self.model._core.loss(self.X, self.y))

    def loss_and_grads(self) -> Tuple[float, Dict[str, np.ndarray]]:
        self.model._core.set_seed(_MASK_SEED)
        return self.model.loss_and_grads(self.X, self.y)

    def snapshot(self) -> Dict[str, np.ndarray]:
        return {n: p.copy() for n, p in self.params.items()}

    def restore(self, saved: Dict[str, np.ndarray]) -> None:
        for n, p in self.params.items():
            p[...] = saved[n]

    def layer_groups(self) -> "OrderedDict[str, List[str]]":
        """Parameterized layer prefix -> its parameter names, in the model's order."""
        groups: "OrderedDict[str, List[str]]" = OrderedDict()
        for name in self.model._param_names:
            groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
        return groups


def _mode_note(twin: _Twin) -> str:
    note = " twin of a float32 model" if twin.source.dtype == "float32" else ""
    if any(t.op == "layer" and isinstance(t.layer, Dropout) for t in twin.model._order):
        note += ", dropout on (one fixed mask)" if twin.model.training else ", dropout off"
    if any(t.op == "layer" and isinstance(t.layer, BatchNorm1d) for t in twin.model._order):
        note += ", batch norm on batch statistics" if twin.model.training else ", batch norm on running statistics"
    return note


def _fmt_shape(shape: Tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> List[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(r, widths, right)]
        out.append("  " + "  ".join(cells).rstrip())
    return out


# ---------------------------------------------------------------------------------- gradcheck
@dataclass
class ParamCheck:
    """One parameter's row of a gradcheck: `checked` of `size` entries compared."""

    name: str
    shape: Tuple[int, ...]
    checked: int
    size: int
    max_grad: float       # largest |backprop| or |finite difference| among the checked entries
    abs_error: float      # largest |backprop - finite difference|
    rel_error: float      # abs_error / max(max_grad, GRADCHECK_FLOOR)
    passed: bool


GRADCHECK_FLOOR = 1e-3


@dataclass
class GradcheckReport:
    """Central finite differences (float64) against backprop, one row per parameter."""

    rows: List[ParamCheck]
    eps: float
    tol: float
    loss: float
    note: str

    @property
    def max_rel_error(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failed(self) -> List[str]:
        """Names of the parameters whose gradient disagrees with finite differences."""
        return [r.name for r in self.rows if not r.passed]

    def __str__(self) -> str:
        head = [("parameter", "shape", "checked", "max |grad|", "abs error", "rel error", "")]
        for r in self.rows:
            checked = f"all {r.size}" if r.checked == r.size else f"{r.checked} of {r.size}"
            head.append((r.name, _fmt_shape(r.shape), checked, f"{r.max_grad:.3e}",
                         f"{r.abs_error:.2e}", f"{r.rel_error:.2e}", "ok" if r.passed else "FAIL"))
        lines = [f"gradcheck: backprop vs central differences (eps={self.eps:g}, float64{self.note}), "
                 f"loss {self.loss:.6g}"]
        lines += _table(head, [False, False, True, True, True, True, False])
        verdict = "passed" if self.passed else f"FAILED ({', '.join(self.failed)})"
        lines.append(f"max rel error {self.max_rel_error:.2e} (tolerance {self.tol:g}): {verdict}")
        return "\n".join(lines)


def gradcheck(model: Model, X: np.ndarray, y: np.ndarray, eps: float = 1e-6, *, tol: float = 1e-6,
              max_entries: int = 64, seed: int = 0) -> GradcheckReport:
    """Compare backprop's gradient with central finite differences, (L(p+eps) - L(p-eps)) / 2eps,
    in float64 on a twin of the model (a float32 model is widened exactly).

    Parameters with more than `max_entries` entries are checked on that many entries drawn at
    random (`seed`); the others on every entry. A parameter's error is the largest
    |backprop - finite difference| over its checked entries, divided by the largest magnitude of
    either among them, or by 1e-3 if that is smaller (so a vanishing gradient is judged by its
    absolute error); it passes when that is <= `tol`.
    """
    eps = _positive_float(eps, "eps")
    tol = _positive_float(tol, "tol")
    if not isinstance(max_entries, (int, np.integer)) or isinstance(max_entries, bool) or max_entries < 1:
        raise ValueError(f"max_entries: expected a positive int, got {max_entries!r}")
    twin = _Twin(model, X, y)
    loss, grads = twin.loss_and_grads()
    rng = np.random.default_rng(seed)
    rows = []
    for name, p in twin.params.items():
        flat = p.reshape(-1)  # a view: writing it writes the twin's parameter
        if flat.size <= max_entries:
            picks = np.arange(flat.size)
        else:
            picks = np.sort(rng.choice(flat.size, size=int(max_entries), replace=False))
        bp = np.asarray(grads[name], np.float64).reshape(-1)[picks]
        fd = np.empty(len(picks))
        for k, i in enumerate(picks):
            orig = flat[i]
            flat[i] = orig + eps
            up = twin.loss()
            flat[i] = orig - eps
            down = twin.loss()
            flat[i] = orig
            fd[k] = (up - down) / (2.0 * eps)
        diff = np.abs(bp - fd)
        abs_err = float(diff.max()) if diff.size else 0.0
        scale = float(max(np.abs(bp).max(initial=0.0), np.abs(fd).max(initial=0.0)))
        rel = abs_err / max(scale, GRADCHECK_FLOOR)
        if not math.isfinite(rel):
            rel = math.inf
        rows.append(ParamCheck(name, tuple(p.shape), len(picks), flat.size, scale, abs_err, rel,
                               rel <= tol))
    return GradcheckReport(rows, eps, tol, float(loss), _mode_note(twin))


# ---------------------------------------------------------------------------------- paths
@dataclass
class Path:
    """One path from a weight entry to the loss.

    `nodes`: the weight entry, the scalar units passed through ("<node>[<unit>]"), and "loss".
    `factors`: the local derivative of each step along it, per example, shape (steps, N).
    `value`: their product, summed over the batch.
    """

    nodes: Tuple[str, ...]
    factors: np.ndarray
    value: float

    @property
    def per_example(self) -> np.ndarray:
        """The product of the local derivatives for each example, shape (N,)."""
        return np.prod(self.factors, axis=0)

    def __str__(self) -> str:
        return " -> ".join(self.nodes) + f"   value {self.value:+.6e}"


@dataclass
class PathReport:
    """Every path from `param[index]` to the loss; `path_sum` is their sum, `backprop` the
    gradient entry the core computes."""

    param: str
    index: Tuple[int, ...]
    paths: List[Path]
    path_sum: float
    backprop: float
    loss: float
    n_examples: int
    note: str
    show: int = 20

    @property
    def abs_error(self) -> float:
        return abs(self.path_sum - self.backprop)

    @property
    def rel_error(self) -> float:
        return self.abs_error / max(abs(self.backprop), np.finfo(np.float64).tiny)

    def __str__(self) -> str:
        idx = ", ".join(str(i) for i in self.index)
        n = self.n_examples
        lines = [f"path_gradients: d loss / d {self.param}[{idx}] over {n} example{'s' * (n != 1)} "
                 f"(float64{self.note}), loss {self.loss:.6g}",
                 f"{len(self.paths)} path{'s' * (len(self.paths) != 1)} from the weight to the loss; "
                 f"along each, the local derivatives multiply (per example), then the batch sums:"]
        shown = self.paths if len(self.paths) <= self.show else sorted(
            self.paths, key=lambda p: -abs(p.value))[: self.show]
        for k, p in enumerate(shown, 1):
            lines.append(f"  #{k}  " + " -> ".join(p.nodes))
            chain = " x ".join(f"{f:.4g}" for f in p.factors[:, 0])
            label = "local derivatives" if n == 1 else "example 0"
            lines.append(f"       {label}: {chain} = {p.per_example[0]:+.6e}")
            lines.append(f"       path value{' (summed over the batch)' if n > 1 else ''}: {p.value:+.6e}")
        if len(shown) < len(self.paths):
            lines.append(f"  ... and {len(self.paths) - len(shown)} more paths (the {self.show} "
                         f"largest shown)")
        lines.append(f"sum over paths   {self.path_sum:+.15e}")
        lines.append(f"backprop         {self.backprop:+.15e}")
        lines.append(f"difference       {self.path_sum - self.backprop:+.1e}")
        return "\n".join(lines)


def _node_labels(order: List[SymbolicTensor], prefix: Dict[int, str]) -> List[str]:
    """A readable, unique label per graph node: Linear nodes by their parameter prefix (with
    "(k)" for the k-th use of a shared layer), other layers by name or kind + counter."""
    uses: Dict[int, int] = {}
    for t in order:
        if t.op == "layer":
            uses[id(t.layer)] = uses.get(id(t.layer), 0) + 1
    seen: Dict[int, int] = {}
    counters: Dict[str, int] = {}
    labels = []
    for t in order:
        if t.op == "input":
            labels.append(getattr(t, "name", None) or "x")
            continue
        if t.op == "layer":
            layer = t.layer
            assert layer is not None
            base = prefix.get(id(layer)) or layer.name
            seen[id(layer)] = seen.get(id(layer), 0) + 1
            if base is not None:
                labels.append(f"{base}({seen[id(layer)]})" if uses[id(layer)] > 1 else base)
                continue
            kind = type(layer).__name__.lower()
        else:
            kind = t.op
        labels.append(f"{kind}{counters.get(kind, 0)}")
        counters[kind] = counters.get(kind, 0) + 1
    return labels


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))  # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _act_forward_and_grad(layer, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(layer, ReLU):
        return np.maximum(z, 0.0), (z > 0).astype(np.float64)
    if isinstance(layer, LeakyReLU):
        s = layer.negative_slope
        return np.where(z > 0, z, s * z), np.where(z > 0, 1.0, s)
    if isinstance(layer, Tanh):
        f = np.tanh(z)
        return f, 1.0 - f * f
    if isinstance(layer, Sigmoid):
        f = _sigmoid(z)
        return f, f * (1.0 - f)
    if isinstance(layer, SiLU):
        sg = _sigmoid(z)
        return z * sg, sg * (1.0 + z * (1.0 - sg))
    if isinstance(layer, ELU):
        neg = np.minimum(z, 0.0)
        return np.where(z > 0, z, layer.alpha * np.expm1(neg)), np.where(z > 0, 1.0, layer.alpha * np.exp(neg))
    if isinstance(layer, Softplus):
        bz = layer.beta * z
        lin = bz > layer.threshold
        return np.where(lin, z, np.logaddexp(0.0, bz) / layer.beta), np.where(lin, 1.0, _sigmoid(bz))
    if isinstance(layer, GELU):
        erf = np.vectorize(math.erf, otypes=[np.float64])
        cdf = 0.5 * (1.0 + erf(z / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return z * cdf, cdf + z * pdf
    if isinstance(layer, (Identity, Dropout)):  # dropout off: the identity
        return z.copy(), np.ones_like(z)
    raise TypeError(f"{layer.describe()}: not supported by path_gradients")


def _norm_forward(layer: Union[BatchNorm1d, LayerNorm], x: np.ndarray, prefix: str, params: Dict[str, np.ndarray],
                  buffers: Dict[str, np.ndarray], training: bool) -> np.ndarray:
    """BatchNorm1d (training: batch mean and biased variance; eval: running statistics) or
    LayerNorm (per example, biased variance), then weight * x + bias when affine."""
    if isinstance(layer, BatchNorm1d):
        if training:
            mean, var = x.mean(axis=0), x.var(axis=0)
        else:
            mean, var = buffers[f"{prefix}.running_mean"], buffers[f"{prefix}.running_var"]
    else:
        mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    out = (x - mean) / np.sqrt(var + layer.eps)
    if f"{prefix}.weight" in params:
        out = out * params[f"{prefix}.weight"] + params[f"{prefix}.bias"]
    return out


def _graph_forward(model: Model, X: np.ndarray) -> Tuple[List[np.ndarray], Dict[int, np.ndarray]]:
    """Float64 NumPy forward of a twin's graph at its current parameters: every node's value
    (in `model._order`), and f'(z) of every activation node by its index. Norm layers follow
    the twin's mode; dropout is the identity (its mask lives in the core)."""
    order = model._order
    pos = {id(t): i for i, t in enumerate(order)}
    params, buffers, prefix = model._params, model._buffers, model._layer_prefix
    vals: List[np.ndarray] = []
    dact: Dict[int, np.ndarray] = {}
    for i, t in enumerate(order):
        ins = [vals[pos[id(u)]] for u in t.inputs]
        if t.op == "input":
            vals.append(X)
        elif t.op == "add":
            vals.append(np.sum(ins, axis=0))
        elif t.op == "concat":
            vals.append(np.concatenate(ins, axis=1))
        elif isinstance(t.layer, Linear):
            p = prefix[id(t.layer)]
            v = ins[0] @ params[f"{p}.weight"].T
            if t.layer.bias:
                v = v + params[f"{p}.bias"]
            vals.append(v)
        elif isinstance(t.layer, (BatchNorm1d, LayerNorm)):
            vals.append(_norm_forward(t.layer, ins[0], prefix[id(t.layer)], params, buffers,
                                      model.training))
        else:
            v, d = _act_forward_and_grad(t.layer, ins[0])
            vals.append(v)
            dact[i] = d
    return vals, dact


def _loss_grad(loss: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(mean loss)/dz, per example and output unit, shape (N, D)."""
    if loss == "cross_entropy":
        s = z - z.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        return p / z.shape[0]
    t = y.reshape(z.shape)
    if loss == "mse":
        return 2.0 * (z - t) / z.size
    e = np.exp(-np.abs(z))
    sig = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return (sig - t) / z.size


def _parse_index(param: str, index: object, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    raw = index if isinstance(index, (tuple, list)) else (index,)
    try:
        idx = tuple(int(i) for i in raw)
        ok = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in raw)
    except (TypeError, ValueError):
        ok = False
    if not ok or len(idx) != len(shape) or any(not 0 <= i < s for i, s in zip(idx, shape)):
        raise ValueError(f"index: expected {len(shape)} int{'s' * (len(shape) != 1)} within the "
                         f"shape {_fmt_shape(shape)} of {param}, got {index!r}")
    return idx


def path_gradients(model: Model, X: np.ndarray, y: np.ndarray, param: str, index: object, *,
                   max_paths: int = 1000) -> PathReport:
    """Every path from the weight entry `param[index]` (e.g. "enc.weight", (2, 0)) through the
    scalar units of the graph to the loss.

    A graph node of width k is k scalar units; a Linear node's unit o is reached from every unit
    of its input (local derivative W[o, i]), an activation's unit j from its input's unit j
    (f'(z_j)), add and concat pass units through (1). The weight itself enters at every use of
    its layer (a shared layer has paths through each use) with local derivative x_i, the input
    of that use (1 for a bias). The loss is reached from every output unit (dE/dz_k).

    The local derivatives come from a float64 NumPy forward of the graph, per example; a path's
    `value` is the product along it, summed over the batch; `path_sum` is the sum of all paths,
    and `backprop` the core's gradient entry (float64 twin, dropout off): they agree to rounding.
    Refuses, with the count, when there are more than `max_paths` paths.
    """
    if not isinstance(max_paths, (int, np.integer)) or isinstance(max_paths, bool) or max_paths < 1:
        raise ValueError(f"max_paths: expected a positive int, got {max_paths!r}")
    norms = [t.layer for t in model._order if t.op == "layer" and isinstance(t.layer, _Norm)]
    if norms:
        raise TypeError(f"path_gradients: the model has {norms[0].describe()}, which it does not "
                        f"support: a normalization layer couples every unit of its input "
                        f"(BatchNorm1d: every example of the batch too), so its gradient is not a "
                        f"sum over paths of per-example scalar units; use gradcheck or "
                        f"moving_target for models with normalization layers")
    twin = _Twin(model, X, y, training=False)
    params = twin.params
    if param not in params:
        raise ValueError(f"param: expected one of the model's parameters {list(params)}, got {param!r}")
    idx = _parse_index(param, index, tuple(params[param].shape))
    prefix, kind = param.rsplit(".", 1)
    order = twin.model._order
    pos = {id(t): i for i, t in enumerate(order)}
    layer_prefix = twin.model._layer_prefix
    labels = _node_labels(order, layer_prefix)
    out_idx = len(order) - 1

    # Float64 forward of the graph, keeping each node's value and each activation's f'(z).
    N = twin.X.shape[0]
    vals, dact = _graph_forward(twin.model, twin.X)
    assert twin.model.loss is not None
    dloss = _loss_grad(twin.model.loss, vals[out_idx], twin.y)

    # Edges between scalar units: consumers of each node, with the input slot they read.
    consumers: List[List[Tuple[int, int]]] = [[] for _ in order]
    for c, t in enumerate(order):
        for slot, u in enumerate(t.inputs):
            consumers[pos[id(u)]].append((c, slot))

    def edges(i: int, j: int):
        """(destination node, unit, local derivative per example) leaving unit j of node i."""
        for c, slot in consumers[i]:
            t = order[c]
            if t.op == "layer" and isinstance(t.layer, Linear):
                W = params[f"{layer_prefix[id(t.layer)]}.weight"]
                for k in range(t.width):
                    yield c, k, np.full(N, W[k, j])
            elif t.op == "layer":
                yield c, j, dact[c][:, j]
            elif t.op == "add":
                yield c, j, np.ones(N)
            else:  # concat: unit j of input `slot` lands after the widths of the slots before it
                off = sum(u.width for u in t.inputs[:slot])
                yield c, off + j, np.ones(N)

    # Number of paths from every unit to the loss (reverse topological order, exact Python
    # ints), to refuse before enumerating.
    count: List[np.ndarray] = [np.zeros(t.width, dtype=object) for t in order]
    count[out_idx][:] = 1
    for i in range(out_idx, -1, -1):
        for c, slot in consumers[i]:
            t = order[c]
            if t.op == "layer" and isinstance(t.layer, Linear):
                count[i] += sum(count[c])
            elif t.op == "concat":
                off = sum(u.width for u in t.inputs[:slot])
                count[i] += count[c][off:off + order[i].width]
            else:
                count[i] += count[c]
    starts = []  # (node, unit, local derivative of the node's unit w.r.t. the weight entry)
    for i, t in enumerate(order):
        if t.op == "layer" and isinstance(t.layer, Linear) and layer_prefix[id(t.layer)] == prefix:
            o = idx[0]
            local = vals[pos[id(t.inputs[0])]][:, idx[1]] if kind == "weight" else np.ones(N)
            starts.append((i, o, local))
    total = sum(count[i][o] for i, o, _ in starts)
    if total > max_paths:
        raise ValueError(f"path_gradients: {total} paths lead from {param}{list(idx)} to the loss, "
                         f"more than max_paths={max_paths}; pass a larger max_paths= or use a "
                         f"smaller model")

    start_label = f"{param}[{', '.join(str(i) for i in idx)}]"
    paths: List[Path] = []

    def walk(i: int, j: int, nodes: List[str], factors: List[np.ndarray]) -> None:
        nodes.append(f"{labels[i]}[{j}]")
        if i == out_idx:
            fs = np.array(factors + [dloss[:, j]])
            paths.append(Path(tuple(nodes) + ("loss",), fs, float(np.sum(np.prod(fs, axis=0)))))
        for c, k, f in edges(i, j):
            factors.append(f)
            walk(c, k, nodes, factors)
            factors.pop()
        nodes.pop()

    for i, o, local in starts:
        walk(i, o, [start_label], [local])
    path_sum = float(math.fsum(p.value for p in paths))
    loss, grads = twin.loss_and_grads()
    return PathReport(param, idx, paths, path_sum, float(grads[param][idx]), float(loss), N,
                      _mode_note(twin))


# ---------------------------------------------------------------------------------- taylor
@dataclass
class TaylorStep:
    """One step size: predicted (first-order) and actual loss change along -grad, and the
    same for a random direction of the same length."""

    step: float
    predicted: float
    actual: float
    random_predicted: float
    random_actual: float

    @property
    def ratio(self) -> float:
        return self.actual / self.predicted if self.predicted != 0 else math.nan


@dataclass
class TaylorReport:
    """The loss change of the step theta -> theta - step * grad (the raw gradient, as SGD with
    lr=step): predicted first-order change -step * ||grad||^2 against the actual change."""

    loss: float
    grad_norm: float
    rows: List[TaylorStep]
    note: str
    tol: float = 1e-2

    @property
    def steps(self) -> List[float]:
        return [r.step for r in self.rows]

    @property
    def ratios(self) -> List[float]:
        return [r.ratio for r in self.rows]

    @property
    def passed(self) -> bool:
        """At the smallest step, actual / predicted is within `tol` of 1, and the random
        direction decreases the loss less than -grad does."""
        if not self.rows:
            return False
        r = min(self.rows, key=lambda s: s.step)
        return abs(r.ratio - 1.0) <= self.tol and r.random_actual > r.actual

    def __str__(self) -> str:
        lines = [f"taylor_check: step theta -> theta - step * grad (float64{self.note}), "
                 f"loss {self.loss:.6g}, ||grad|| {self.grad_norm:.4e}",
                 "predicted = -step * ||grad||^2 (first order); a random direction of the same "
                 "length for comparison:"]
        rows = [("step", "predicted", "actual", "actual/predicted", "random: predicted", "actual")]
        for r in self.rows:
            rows.append((f"{r.step:g}", f"{r.predicted:+.6e}", f"{r.actual:+.6e}", f"{r.ratio:.6f}",
                         f"{r.random_predicted:+.6e}", f"{r.random_actual:+.6e}"))
        lines += _table(rows, [True] * 6)
        lines.append("the ratio tends to 1 as the step shrinks; -grad decreases the loss most "
                     "(to first order, any other direction of the same length decreases it less)")
        return "\n".join(lines)


def taylor_check(model: Model, X: np.ndarray, y: np.ndarray,
                 steps: Sequence[float] = (1e-1, 1e-2, 1e-3), *, seed: int = 0) -> TaylorReport:
    """For each step size s, move the parameters to theta - s * grad (the raw, unnormalized
    gradient: the step SGD with lr=s takes) and compare the actual loss change with the
    first-order prediction -s * ||grad||^2; also move along a random direction r with
    ||r|| = ||grad|| (drawn from `seed`), predicted s * <grad, r>. Float64 twin of the model."""
    try:
        steps = [float(s) for s in steps]
    except (TypeError, ValueError):
        raise ValueError(f"steps: expected a sequence of positive numbers, got {steps!r}") from None
    if not steps or any(not (math.isfinite(s) and s > 0) for s in steps):
        raise ValueError(f"steps: expected a non-empty sequence of positive numbers, got {steps!r}")
    twin = _Twin(model, X, y)
    base = twin.snapshot()
    loss, grads = twin.loss_and_grads()
    g = {n: np.asarray(v, np.float64) for n, v in grads.items()}
    gnorm2 = float(sum(np.sum(v * v) for v in g.values()))
    rng = np.random.default_rng(seed)
    r = {n: rng.standard_normal(v.shape) for n, v in g.items()}
    rnorm = math.sqrt(sum(float(np.sum(v * v)) for v in r.values()))
    scale = math.sqrt(gnorm2) / rnorm if rnorm > 0 else 0.0
    r = {n: v * scale for n, v in r.items()}
    g_dot_r = float(sum(np.sum(g[n] * r[n]) for n in g))

    def loss_at(direction: Dict[str, np.ndarray], s: float) -> float:
        for n, p in twin.params.items():
            p[...] = base[n] + s * direction[n]
        value = twin.loss()
        twin.restore(base)
        return value

    neg_g = {n: -v for n, v in g.items()}
    rows = [TaylorStep(s, -s * gnorm2, loss_at(neg_g, s) - loss, s * g_dot_r, loss_at(r, s) - loss)
            for s in steps]
    return TaylorReport(float(loss), math.sqrt(gnorm2), rows, _mode_note(twin))


# ---------------------------------------------------------------------------------- moving target
@dataclass
class LayerMove:
    """How one layer's gradient, and the statistics of its input, move once every other layer
    has taken its step."""

    layer: str
    params: Tuple[str, ...]
    cosine: float
    norm_ratio: float         # ||grad after|| / ||grad before||
    mean_drift: float = 0.0   # ||mean after - mean before|| / sqrt(sum of the variances before)
    var_drift: float = 0.0    # ||var after - var before|| / ||var before||


@dataclass
class MovingTargetReport:
    rows: List[LayerMove]
    lr: float
    loss: float
    note: str

    @property
    def layers(self) -> List[str]:
        return [r.layer for r in self.rows]

    @property
    def cosine(self) -> Dict[str, float]:
        return {r.layer: r.cosine for r in self.rows}

    @property
    def norm_ratio(self) -> Dict[str, float]:
        return {r.layer: r.norm_ratio for r in self.rows}

    @property
    def mean_drift(self) -> Dict[str, float]:
        return {r.layer: r.mean_drift for r in self.rows}

    @property
    def var_drift(self) -> Dict[str, float]:
        return {r.layer: r.var_drift for r in self.rows}

    def __str__(self) -> str:
        lines = [f"moving_target: each layer's gradient before and after the other layers take a "
                 f"plain gradient step (lr={self.lr:g}, float64{self.note}), loss {self.loss:.6g}"]
        rows = [("layer", "cosine", "norm after / before", "input mean drift", "input var drift")]
        for r in self.rows:
            rows.append((r.layer, f"{r.cosine:.6f}", f"{r.norm_ratio:.6f}", f"{r.mean_drift:.2e}",
                         f"{r.var_drift:.2e}"))
        lines += _table(rows, [False, True, True, True, True])
        lines.append("cosine 1 and ratio 1: the layer's target did not move; simultaneous updates "
                     "step every layer along a gradient that is stale once the others have moved")
        lines.append("input drift: how far the per-feature mean (in units of the input's spread) "
                     "and variance (relative) of the layer's input move with that step")
        return "\n".join(lines)


def _layer_input_nodes(model: Model) -> "OrderedDict[str, List[int]]":
    """Parameterized layer prefix -> the graph node indices its uses read (one per use)."""
    pos = {id(t): i for i, t in enumerate(model._order)}
    uses: "OrderedDict[str, List[int]]" = OrderedDict()
    for t in model._order:
        if t.op == "layer" and id(t.layer) in model._layer_prefix:
            uses.setdefault(model._layer_prefix[id(t.layer)], []).append(pos[id(t.inputs[0])])
    return uses


def _drift(before: np.ndarray, after: np.ndarray) -> Tuple[float, float]:
    """(mean drift, variance drift) of a layer input, statistics per feature over the rows."""
    m0, m1 = before.mean(axis=0), after.mean(axis=0)
    v0, v1 = before.var(axis=0), after.var(axis=0)
    dm, dv = float(np.linalg.norm(m1 - m0)), float(np.linalg.norm(v1 - v0))
    spread, vnorm = math.sqrt(float(v0.sum())), float(np.linalg.norm(v0))
    mean_drift = dm / spread if spread > 0 else (0.0 if dm == 0 else math.inf)
    var_drift = dv / vnorm if vnorm > 0 else (0.0 if dv == 0 else math.inf)
    return mean_drift, var_drift


def moving_target(model: Model, X: np.ndarray, y: np.ndarray, *,
                  lr: Optional[float] = None) -> MovingTargetReport:
    """For each parameterized layer L: its gradient g at the current parameters, then the
    gradient g' after every *other* layer took a plain gradient step p -> p - lr * grad (no
    momentum or Adam state: a plain step, whatever the optimizer; lr=None: the compiled
    optimizer's learning rate), L's own parameters unchanged. Reports cos(g, g') and
    ||g'|| / ||g|| over L's weight and bias together.

    With the same step, the drift of L's input on the batch X (a shared layer: the inputs of
    all its uses, stacked): with m, v the per-feature mean and variance over the rows before
    the step and m', v' after it, mean_drift = ||m' - m|| / sqrt(sum v) (how far the mean moved,
    in units of the input's overall spread) and var_drift = ||v' - v|| / ||v|| (relative change
    of the variances). Zero for the first layer (its input is X). The inputs come from a
    float64 NumPy forward of the graph; norm layers follow the model's mode, dropout is the
    identity there. Float64 twin of the model; the model is not changed."""
    twin = _Twin(model, X, y)
    if lr is None:
        step = float(model.optimizer.lr)  # type: ignore[union-attr]
    else:
        step = _positive_float(lr, "lr", "a positive number or None")
    base = twin.snapshot()
    loss, grads = twin.loss_and_grads()
    input_nodes = _layer_input_nodes(twin.model)
    before, _ = _graph_forward(twin.model, twin.X)
    rows = []
    for layer, names in twin.layer_groups().items():
        for n, p in twin.params.items():
            if n not in names:
                p[...] = base[n] - step * grads[n]
        _, after = twin.loss_and_grads()
        moved, _ = _graph_forward(twin.model, twin.X)
        twin.restore(base)
        g0 = np.concatenate([np.asarray(grads[n], np.float64).ravel() for n in names])
        g1 = np.concatenate([np.asarray(after[n], np.float64).ravel() for n in names])
        n0, n1 = float(np.linalg.norm(g0)), float(np.linalg.norm(g1))
        cos = float(np.dot(g0, g1) / (n0 * n1)) if n0 > 0 and n1 > 0 else math.nan
        ratio = n1 / n0 if n0 > 0 else math.nan
        nodes = input_nodes[layer]
        mean_drift, var_drift = _drift(np.concatenate([before[i] for i in nodes]),
                                       np.concatenate([moved[i] for i in nodes]))
        rows.append(LayerMove(layer, tuple(names), cos, ratio, mean_drift, var_drift))
    return MovingTargetReport(rows, step, float(loss), _mode_note(twin))
