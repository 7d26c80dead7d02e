"""Saving and loading models: one safetensors file with the parameters (under their
PyTorch-style names, so the file is also a plain state_dict), optionally the optimizer state
and step counts, and the architecture, compile settings and RNG state as JSON metadata.

Nothing in a file is ever executed: the architecture is data, rebuilt through a registry of
known layer types (`LAYER_SPECS`), and every field is checked before anything is allocated.
A truncated, corrupt or hostile file raises ValueError.

The format (metadata key "layerprop", a JSON object):

    {"format": "layerprop", "format_version": 1, "layerprop_version": "...",
     "model": {"class": "Sequential" | "Model", "dtype": "float32", "seed": 0 | null,
               "training": true,
               "layers": [{"type": "Linear", "name": "0",
                           "config": {"in_features": 4, "out_features": 3, "bias": true}}, ...],
               # Model only: the graph in topological order; node 0 is the input
               "graph": {"nodes": [{"op": "input", "width": 4, "name": null},
                                   {"op": "layer", "layer": 0, "inputs": [0]},
                                   {"op": "add" | "concat", "inputs": [1, 2]}, ...]}},
     "params": ["0.weight", "0.bias", ...],
     "compile": null | {"loss": "mse", "optimizer": {"type": "Adam", "config": {...}},
                        "schedule": {"type": "Simultaneous", "config": {}},
                        "clip": {"norm": 1.0, "value": null}  (only when clipping is on)},
     "optimizer_state": null | {"slots": 2, "steps": "optimizer.steps",
                                "names": ["exp_avg", "exp_avg_sq"]  (slot names; older files omit it)},
     "rng": {"shuffle": <numpy PCG64 state>, "core": [seed, draws] or null}}

Tensors: each parameter under its own name; buffers (BatchNorm1d running statistics) under
theirs ("1.running_mean"), listed in "buffers"; optimizer slot k of parameter P under
"optimizer.slot<k>.<P>" (slot k is the optimizer's k-th named state, as in
model.optimizer_state(): SGD's momentum_buffer; Adam's and AdamW's exp_avg, exp_avg_sq; RMSprop's
square_avg, momentum_buffer, grad_avg; Adagrad's sum);
per-tensor step counts as int64 "optimizer.steps".

A new layer type becomes savable with `register_layer` (its constructor arguments as JSON);
its parameters and buffers are whatever the model reports, checked by name, shape and dtype.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Type, Union

import numpy as np

from . import layers as L
from . import validation as V
from .optim import OPTIMIZER_TYPES, Adam, Optimizer
from .schedules import SCHEDULE_TYPES, Schedule

__all__ = ["save", "load", "model_to_state", "model_from_state", "LAYER_SPECS", "register_layer"]

FORMAT = "layerprop"
FORMAT_VERSION = 1
META_KEY = "layerprop"
_MAX_INT = 2 ** 40          # no width, size or count in a file may exceed this
# Limits of what `load` accepts (docs/saving.md), checked before anything is built or read:
MAX_LAYERS = 4096           # layers of a model; nodes of a graph besides its input
MAX_GRAPH_INPUTS = 16 * MAX_LAYERS   # a graph's edges: inputs summed over its nodes
MAX_ROW_BYTES = 2 ** 28     # activations of one row: sum over nodes of width x itemsize
MAX_PARAM_BYTES = 2 ** 34   # parameters and buffers, from the declared architecture
MAX_HEADER_BYTES = 2 ** 24  # the safetensors JSON header (architecture, names, offsets)
_MAX_NODES = MAX_LAYERS + 1

PathLike = Union[str, "os.PathLike[str]"]


class _Bad(ValueError):
    """A file field failed validation (re-raised as ValueError naming the file)."""


# ---------------------------------------------------------------------------- field checks
def _int(v: Any, what: str, lo: int = 0, hi: int = _MAX_INT) -> int:
    if not V.is_int(v) or not lo <= v <= hi:
        raise _Bad(f"{what}: expected an int in [{lo}, {hi}], got {v!r:.80}")
    return int(v)


def _float(v: Any, what: str) -> float:
    if not V.is_real(v) or not math.isfinite(v):
        raise _Bad(f"{what}: expected a finite number, got {v!r:.80}")
    return float(v)


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"{what}: expected true or false, got {v!r:.80}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{what}: expected a string, got {v!r:.80}")
    return v


def _dict(v: Any, what: str, keys: Optional[Tuple[str, ...]] = None) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad(f"{what}: expected an object, got {type(v).__name__}")
    if keys is not None:
        missing = [k for k in keys if k not in v]
        extra = [k for k in v if k not in keys]
        if missing or extra:
            raise _Bad(f"{what}: expected the keys {list(keys)}, missing {missing}, unknown {extra}")
    return v


def _list(v: Any, what: str, max_len: int = _MAX_NODES) -> List[Any]:
    if not isinstance(v, list):
        raise _Bad(f"{what}: expected a list (at most {max_len} items), got {type(v).__name__}")
    if len(v) > max_len:
        raise _Bad(f"{what}: {len(v)} items, more than the limit of {max_len}")
    return v


def _opt_name(v: Any, what: str) -> Optional[str]:
    if v is None:
        return None
    s = _str(v, what)
    if not s or "." in s or len(s) > 256:
        raise _Bad(f"{what}: expected a non-empty name without '.', got {s!r:.80}")
    return s


# ---------------------------------------------------------------------------- layer registry
class LayerSpec:
    """How one layer type is written to and rebuilt from a file.

    `get_config(layer)` returns JSON-able constructor arguments (without `name`);
    `from_config(config, name)` validates them and returns the layer. Its parameters and
    buffers are written under the names the model gives them and checked on load.
    """

    def __init__(self, cls: Type[L.Layer], get_config: Callable[[Any], Dict[str, Any]],
                 from_config: Callable[[Dict[str, Any], Optional[str]], L.Layer]) -> None:
        self.cls = cls
        self.get_config = get_config
        self.from_config = from_config


LAYER_SPECS: "OrderedDict[str, LayerSpec]" = OrderedDict()


def register_layer(type_name: str, cls: Type[L.Layer], get_config: Callable[[Any], Dict[str, Any]],
                   from_config: Callable[[Dict[str, Any], Optional[str]], L.Layer]) -> None:
    """Make a layer type savable: `type_name` is what the file's "type" field says."""
    LAYER_SPECS[type_name] = LayerSpec(cls, get_config, from_config)


_KIND_CHECKS: Dict[str, Callable[[Any, str], Any]] = {
    "int": lambda v, what: _int(v, what, 1), "float": _float, "bool": _bool}


def _from_config(cls: Type[L.Layer]) -> Callable[[Dict[str, Any], Optional[str]], L.Layer]:
    """A layer class's `from_config` behind the file checks: exactly its config_fields, each
    of its JSON kind (ints >= 1 and at most 2**40, finite numbers, true/false); the
    constructor checks the values."""
    def build(c: Dict[str, Any], name: Optional[str]) -> L.Layer:
        fields = cls.config_fields
        c = _dict(c, f"{cls.__name__} config", tuple(k for k, _kind in fields))
        return cls.from_config({k: _KIND_CHECKS[kind](c[k], f"{cls.__name__} {k}") for k, kind in fields}, name)
    return build


for _cls in L.LAYER_TYPES:  # every layer of the package carries its own configuration
    register_layer(_cls.__name__, _cls, _cls.get_config, _from_config(_cls))


def _layer_type(layer: L.Layer) -> str:
    for type_name, spec in LAYER_SPECS.items():
        if type(layer) is spec.cls:
            return type_name
    raise TypeError(f"{layer.describe()}: layer type {type(layer).__name__} cannot be saved "
                    f"(known: {', '.join(LAYER_SPECS)})")


# ---------------------------------------------------------------------------- optimizers, schedules
_OPTIMIZERS: Dict[str, Type[Optimizer]] = {cls.__name__: cls for cls in OPTIMIZER_TYPES}
# What a state slot that is never negative holds (the message when a file's is).
_NONNEG_SLOTS = {"exp_avg_sq": "Adam's second moments", "square_avg": "RMSprop's second moments",
                 "sum": "Adagrad's sums of squared gradients"}
_SCHEDULES: Dict[str, Type[Schedule]] = {cls.__name__: cls for cls in SCHEDULE_TYPES}


def _optimizer_config(opt: Optimizer) -> Dict[str, Any]:
    name = type(opt).__name__
    if _OPTIMIZERS.get(name) is not type(opt):
        raise TypeError(f"optimizer: {name} cannot be saved (known: {', '.join(_OPTIMIZERS)})")
    return {"type": name, "config": opt.get_config()}


def _pair(v: Any, what: str) -> Tuple[float, float]:
    pair = _list(v, what, 2)
    if len(pair) != 2:
        raise _Bad(f"{what}: expected two numbers")
    return _float(pair[0], what), _float(pair[1], what)


_OPT_KINDS: Dict[str, Callable[[Any, str], Any]] = {"float": _float, "bool": _bool, "pair": _pair}


def _optimizer_from(d: Any) -> Optimizer:
    d = _dict(d, "compile.optimizer", ("type", "config"))
    name = _str(d["type"], "compile.optimizer.type")
    if name not in _OPTIMIZERS:
        raise _Bad(f"compile.optimizer.type: unknown optimizer {name!r:.80} (known: {', '.join(_OPTIMIZERS)})")
    cls = _OPTIMIZERS[name]
    c = _dict(d["config"], f"{name} config", tuple(k for k, _kind in cls.config_fields))
    return cls(**{k: _OPT_KINDS[kind](c[k], f"{name} {k}") for k, kind in cls.config_fields})


def _schedule_config(s: Schedule) -> Dict[str, Any]:
    name = type(s).__name__
    if _SCHEDULES.get(name) is not type(s):
        raise TypeError(f"schedule: {name} cannot be saved (known: {', '.join(_SCHEDULES)})")
    return {"type": name, "config": {k: getattr(s, k) for k in s.config_args}}


def _schedule_from(d: Any) -> Schedule:
    d = _dict(d, "compile.schedule", ("type", "config"))
    name = _str(d["type"], "compile.schedule.type")
    if name not in _SCHEDULES:
        raise _Bad(f"compile.schedule.type: unknown schedule {name!r:.80} (known: {', '.join(_SCHEDULES)})")
    args = _SCHEDULES[name].config_args
    c = _dict(d["config"], f"{name} config")
    if "units" in args and "units" not in c:  # files from before LocoProp's units: layerprop's
        args = tuple(a for a in args if a != "units")
    c = _dict(c, f"{name} config", args)
    for k, v in c.items():  # scalars only; the constructor checks their values
        if not (v is None or isinstance(v, (str, int, float))):
            raise _Bad(f"{name} {k}: expected a number or a string, got {type(v).__name__}")
    return _SCHEDULES[name](**c)


# ---------------------------------------------------------------------------- model <-> state
def _architecture(model: Any) -> Dict[str, Any]:
    from .model import Sequential
    layers: List[L.Layer] = model.layers
    specs = []
    for i, layer in enumerate(layers):
        t = _layer_type(layer)
        spec = {"type": t, "name": layer.name, "config": LAYER_SPECS[t].get_config(layer)}
        prefix = model.layer_name(layer)
        if not isinstance(model, Sequential) and prefix is not None:
            spec["prefix"] = prefix  # its parameters' names
        specs.append(spec)
    arch: Dict[str, Any] = {"class": "Sequential" if isinstance(model, Sequential) else "Model",
                            "dtype": model.dtype, "seed": model.seed, "training": bool(model.training),
                            "layers": specs}
    if not isinstance(model, Sequential):
        order = model.nodes
        index = {id(t): i for i, t in enumerate(order)}
        lidx = {id(l): i for i, l in enumerate(layers)}
        nodes = []
        for t in order:
            if t.op == "input":
                nodes.append({"op": "input", "width": t.width, "name": getattr(t, "name", None)})
            elif t.op in ("add", "concat"):
                nodes.append({"op": t.op, "inputs": [index[id(u)] for u in t.inputs]})
            else:
                nodes.append({"op": "layer", "layer": lidx[id(t.layer)],
                              "inputs": [index[id(u)] for u in t.inputs]})
        arch["graph"] = {"nodes": nodes}
    return arch


def model_to_state(model: Any, include_optimizer: bool = True) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """The model as (tensors, metadata): what `save` writes, without the file. Arrays are
    copies; the metadata holds one JSON string under "layerprop"."""
    from . import __version__
    from .model import Model
    if not isinstance(model, Model):
        raise TypeError(f"model: expected an lp.Model, got {type(model).__name__}")
    if not isinstance(include_optimizer, bool):
        raise TypeError(f"include_optimizer: expected True or False, got {include_optimizer!r}")
    # One consistent copy, taken under the model's lock: a fit running in another thread
    # cannot interleave its steps with this read (no file mixes two steps' state).
    snap = model._snapshot()
    tensors: "OrderedDict[str, np.ndarray]" = OrderedDict(snap["params"])
    buffers = snap["buffers"]
    tensors.update(buffers)
    meta: Dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                            "layerprop_version": __version__, "model": _architecture(model),
                            "params": list(model.parameters()), "buffers": list(buffers),
                            "compile": None, "optimizer_state": None}
    if model.loss is not None:
        assert model.optimizer is not None
        meta["compile"] = {"loss": model.loss, "optimizer": _optimizer_config(model.optimizer),
                           "schedule": _schedule_config(model.schedule)}
        if model.clip_grad_norm is not None or model.clip_grad_value is not None:
            meta["compile"]["clip"] = {"norm": model.clip_grad_norm, "value": model.clip_grad_value}
        if include_optimizer:
            # slot k of the file is the optimizer's k-th named state tensor (exp_avg, exp_avg_sq)
            state = snap["optimizer"]
            slot_names = model._optimizer_state_names()
            for k, sname in enumerate(slot_names):
                for name, entry in state.items():
                    tensors[f"optimizer.slot{k}.{name}"] = entry[sname]
            tensors["optimizer.steps"] = np.array([entry["step"] for entry in state.values()], dtype=np.int64)
            meta["optimizer_state"] = {"slots": len(slot_names), "steps": "optimizer.steps", "names": list(slot_names)}
    meta["rng"] = {"shuffle": snap["rng"]["shuffle"], "core": list(snap["rng"]["core"])}
    return tensors, {META_KEY: json.dumps(meta, separators=(",", ":"))}


def _parse_meta(metadata: Optional[Mapping[str, str]]) -> Dict[str, Any]:
    if not metadata or META_KEY not in metadata:
        raise _Bad("no layerprop metadata (not a file written by model.save)")
    text = metadata[META_KEY]
    if not isinstance(text, str):
        raise _Bad("metadata: expected a JSON string")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise _Bad(f"metadata: not valid JSON ({str(e)[:100]})") from None
    meta = _dict(meta, "metadata")
    if meta.get("format") != FORMAT:
        raise _Bad(f"metadata.format: expected {FORMAT!r}, got {meta.get('format')!r:.80}")
    version = _int(meta.get("format_version"), "metadata.format_version", 1)
    if version > FORMAT_VERSION:
        raise _Bad(f"metadata.format_version: {version} is newer than this layerprop reads "
                   f"({FORMAT_VERSION}); upgrade layerprop")
    return meta


def _build_layers(arch: Dict[str, Any], graph: bool) -> List[Tuple[L.Layer, Optional[str]]]:
    """The layers with their parameter-name prefix (graph models; None for Sequential).
    Python objects only: the core allocates nothing here."""
    out = []
    for i, spec in enumerate(_list(arch.get("layers"), "model.layers", MAX_LAYERS)):
        spec = _dict(spec, f"model.layers[{i}]")
        keys = ("type", "name", "config", "prefix") if "prefix" in spec and graph else ("type", "name", "config")
        _dict(spec, f"model.layers[{i}]", keys)
        t = _str(spec["type"], f"model.layers[{i}].type")
        if t not in LAYER_SPECS:
            raise _Bad(f"model.layers[{i}].type: unknown layer type {t!r:.80} (known: {', '.join(LAYER_SPECS)})")
        name = _opt_name(spec["name"], f"model.layers[{i}].name")
        prefix = _opt_name(spec.get("prefix"), f"model.layers[{i}].prefix")
        try:
            layer = LAYER_SPECS[t].from_config(_dict(spec["config"], f"model.layers[{i}].config"), name)
        except _Bad as e:
            raise _Bad(f"model.layers[{i}] ({t}): {e}") from None
        except (TypeError, ValueError) as e:
            raise _Bad(f"model.layers[{i}] ({t}): {e}") from None
        out.append((layer, prefix))
    if not out:
        raise _Bad("model.layers: empty")
    return out


def _row_limit(row_bytes: int, itemsize: int) -> None:
    if row_bytes > MAX_ROW_BYTES:
        raise _Bad(f"model: one row of data needs {row_bytes} bytes of activations (node widths x "
                   f"{itemsize} bytes, summed over the graph), more than the limit of {MAX_ROW_BYTES} bytes")


class _Plan:
    """The architecture of a file, checked without the core: its layers, graph, the names and
    shapes of the tensors it will hold, and the memory it will ask for."""

    cls: str
    dtype: str
    seed: Optional[int]
    training: bool
    layers: List[L.Layer]
    ts: List[L.SymbolicTensor]            # graph models: the symbolic tensors of the nodes
    names: Dict[int, str]                 # id(core layer) -> its tensors' name prefix
    params: "OrderedDict[str, Tuple[int, ...]]"
    buffers: "OrderedDict[str, Tuple[int, ...]]"
    variances: List[str]                  # BatchNorm running variances (must be >= 0)


def _plan_graph(nodes: List[Any], layers: List[Tuple[L.Layer, Optional[str]]], itemsize: int
                ) -> Tuple[List[L.SymbolicTensor], List[int]]:
    """The symbolic graph (cheap Python objects), refused if it has more edges than
    MAX_GRAPH_INPUTS, nodes that do not lead to the output, or too wide activations.
    Returns the tensors and, per layer, how many nodes use it."""
    ts: List[L.SymbolicTensor] = []
    uses = [0] * len(layers)
    inputs_of: List[List[int]] = []
    edges = 0
    try:
        for i, nd in enumerate(nodes):
            nd = _dict(nd, f"model.graph.nodes[{i}]")
            op = nd.get("op")
            if i == 0:
                _dict(nd, "model.graph.nodes[0]", ("op", "width", "name"))
                if op != "input":
                    raise _Bad("model.graph.nodes[0]: expected the input node")
                ts.append(L.Input(_int(nd["width"], "model.graph.nodes[0].width", 1),
                                  name=_opt_name(nd["name"], "model.graph.nodes[0].name")))
                inputs_of.append([])
                continue
            keys = ("op", "layer", "inputs") if op == "layer" else ("op", "inputs")
            _dict(nd, f"model.graph.nodes[{i}]", keys)
            ins = _list(nd["inputs"], f"model.graph.nodes[{i}].inputs", MAX_GRAPH_INPUTS)
            if not ins:
                raise _Bad(f"model.graph.nodes[{i}].inputs: empty")
            edges += len(ins)
            if edges > MAX_GRAPH_INPUTS:
                raise _Bad(f"model.graph.nodes: more than the limit of {MAX_GRAPH_INPUTS} inputs in all")
            idx = [_int(j, f"model.graph.nodes[{i}].inputs", 0, i - 1) for j in ins]
            args = [ts[j] for j in idx]
            if op == "layer":
                li = _int(nd["layer"], f"model.graph.nodes[{i}].layer", 0, len(layers) - 1)
                if len(args) != 1:
                    raise _Bad(f"model.graph.nodes[{i}].inputs: a layer takes one input")
                uses[li] += 1
                ts.append(layers[li][0](args[0]))
            elif op == "add":
                if len(args) < 2:
                    raise _Bad(f"model.graph.nodes[{i}].inputs: add takes at least two inputs")
                ts.append(L.add(*args))
            elif op == "concat":
                ts.append(L.concat(args))
            else:
                raise _Bad(f"model.graph.nodes[{i}].op: unknown op {op!r:.80}")
            inputs_of.append(idx)
    except _Bad:
        raise
    except (TypeError, ValueError) as e:
        raise _Bad(f"model.graph: {e}") from None
    _row_limit(sum(t.width for t in ts) * itemsize, itemsize)
    reached = [False] * len(ts)
    reached[-1] = True
    for i in range(len(ts) - 1, 0, -1):
        if reached[i]:
            for j in inputs_of[i]:
                reached[j] = True
    if not all(reached):
        raise _Bad("model.graph.nodes: some nodes do not lead to the output (the last node)")
    return ts, uses


def _plan(arch: Any) -> _Plan:
    """Check the declared architecture, in time linear in its size, before the core allocates
    anything."""
    p = _Plan()
    arch = _dict(arch, "model")
    cls = arch.get("class")
    if cls not in ("Sequential", "Model"):
        raise _Bad(f"model.class: expected 'Sequential' or 'Model', got {cls!r:.80}")
    p.cls = cls
    expected = {"class", "dtype", "seed", "training", "layers"} | ({"graph"} if cls == "Model" else set())
    if set(arch) != expected:
        raise _Bad(f"model: expected the keys {sorted(expected)}, got {sorted(arch)[:10]}")
    dtype = arch["dtype"]
    if dtype not in ("float32", "float64"):
        raise _Bad(f"model.dtype: expected 'float32' or 'float64', got {dtype!r:.80}")
    p.dtype = dtype
    itemsize = np.dtype(dtype).itemsize
    seed = arch["seed"]
    p.seed = None if seed is None else _int(seed, "model.seed", 0, 2 ** 64 - 1)
    p.training = _bool(arch["training"], "model.training")
    _list(arch["layers"], "model.layers", MAX_LAYERS)
    nodes: List[Any] = []
    if cls == "Model":
        graph = _dict(arch["graph"], "model.graph", ("nodes",))
        nodes = _list(graph["nodes"], "model.graph.nodes", MAX_LAYERS + 1)
        if len(nodes) < 2:
            raise _Bad("model.graph.nodes: expected an input and at least one more node")
    layers = _build_layers(arch, graph=cls == "Model")
    p.layers = [layer for layer, _prefix in layers]
    total = sum(math.prod(shape) for l in p.layers if l.stored
                for _n, shape in l.param_shapes() + l.buffer_shapes())
    if total * itemsize > MAX_PARAM_BYTES:
        raise _Bad(f"model.layers: the architecture declares {total * itemsize} bytes of parameters and "
                   f"buffers, more than the limit of {MAX_PARAM_BYTES} bytes")
    p.names = {}
    p.ts = []
    if cls == "Sequential":
        first = next((l.input_width for l in p.layers if l.input_width is not None), None)
        if first is None or not any(isinstance(l, L.Linear) for l in p.layers):
            raise _Bad("model.layers: a Sequential needs at least one Linear")
        width = first
        row = width
        for i, l in enumerate(p.layers):
            try:
                width = l.out_width(width)
            except (TypeError, ValueError) as e:
                raise _Bad(f"model.layers[{i}]: {e}") from None
            row += width
        _row_limit(row * itemsize, itemsize)
        core = [(i, l, l.name or str(i)) for i, l in enumerate(p.layers) if l.stored]
    else:
        p.ts, uses = _plan_graph(nodes, layers, itemsize)
        if not all(uses):
            raise _Bad("model.layers: some layers are not used by the graph")
        core = []
        for i, (l, prefix) in enumerate(layers):
            if l.has_params or l.stored:
                if prefix is None:
                    raise _Bad(f"model.layers[{i}].prefix: a {type(l).__name__} of a graph model needs "
                               "its parameters' name prefix")
                core.append((i, l, prefix))
    p.params, p.buffers, p.variances = OrderedDict(), OrderedDict(), []
    seen: Dict[str, int] = {}
    for i, l, prefix in core:
        if prefix in seen:
            raise _Bad(f"model.layers[{i}]: layer names must be unique, {prefix!r} is also the name "
                       f"of model.layers[{seen[prefix]}]")
        seen[prefix] = i
        p.names[id(l)] = prefix
        for pname, shape in l.param_shapes():
            p.params[f"{prefix}.{pname}"] = tuple(shape)
        for bname, shape in l.buffer_shapes():
            p.buffers[f"{prefix}.{bname}"] = shape
            if bname == "running_var":
                p.variances.append(f"{prefix}.{bname}")
    return p


def _build(p: _Plan) -> Any:
    """The model of a checked plan (the core allocates its parameters here)."""
    from .model import Model, Sequential
    model: Any
    try:
        if p.cls == "Sequential":
            model = Sequential(*p.layers, dtype=p.dtype, seed=p.seed)
        else:
            model = Model._from_graph(p.ts[0], p.ts[-1], p.dtype, p.seed, names=p.names)
    except (TypeError, ValueError) as e:
        raise _Bad(f"model: {e}") from None
    if p.cls == "Model" and len(model.nodes) != len(p.ts):
        raise _Bad("model.graph.nodes: some nodes do not lead to the output (the last node)")
    model.train() if p.training else model.eval()
    return model


def _check_tensor(tensors: Mapping[str, Any], key: str, shape: Tuple[int, ...], dtype: Any,
                  get_shape: Callable[[str], Tuple[Tuple[int, ...], str]]) -> None:
    if key not in tensors:
        raise _Bad(f"tensor {key!r}: missing from the file")
    got_shape, got_dtype = get_shape(key)
    if got_dtype != np.dtype(dtype).name:
        raise _Bad(f"tensor {key!r}: expected dtype {np.dtype(dtype).name}, got {got_dtype}")
    if tuple(got_shape) != tuple(shape):
        raise _Bad(f"tensor {key!r}: expected shape {tuple(shape)}, got {tuple(got_shape)}")


def _check_values(key: str, a: np.ndarray, nonneg: bool = False, what: str = "values") -> None:
    """Refuse NaN or infinite values (and negative ones where `nonneg`)."""
    finite = np.isfinite(a)
    if not finite.all():
        raise _Bad(f"tensor {key!r}: {a.size - int(np.count_nonzero(finite))} of {a.size} values are "
                   "NaN or infinite (a diverged or corrupt model)")
    if nonneg and a.size and a.min() < 0:
        raise _Bad(f"tensor {key!r}: {what} must be >= 0, got {a.min()!r}")


def _restore(meta: Dict[str, Any], keys: Mapping[str, Any],
             get_shape: Callable[[str], Tuple[Tuple[int, ...], str]],
             get: Callable[[str], np.ndarray], check_values: bool = True) -> Any:
    """Validate the metadata and the tensors' shapes and dtypes (from the header alone), then
    build the model and read the data. Linear time in the size of the architecture."""
    known = {"format", "format_version", "layerprop_version", "model", "params", "buffers", "compile",
             "optimizer_state", "rng"}
    unknown = [k for k in meta if k not in known]
    if unknown:
        raise _Bad(f"metadata: unknown keys {unknown[:5]}")
    plan = _plan(meta.get("model"))
    dtype = plan.dtype
    params = [_str(p, "params[]") for p in _list(meta.get("params"), "params", 2 * MAX_LAYERS)]
    buffers = [_str(b, "buffers[]") for b in _list(meta.get("buffers", []), "buffers", 2 * MAX_LAYERS)]
    if len(set(params + buffers)) != len(params + buffers):
        raise _Bad("params: names listed twice")
    if set(params) != set(plan.params):
        raise _Bad(f"params: expected {list(plan.params)[:8]}, the file lists {params[:8]}")
    for name, shape in plan.params.items():
        _check_tensor(keys, name, shape, dtype, get_shape)
    if set(buffers) != set(plan.buffers):
        raise _Bad(f"buffers: expected {list(plan.buffers)[:8]}, the file lists {buffers[:8]}")
    for name, shape in plan.buffers.items():
        _check_tensor(keys, name, shape, dtype, get_shape)

    comp = meta.get("compile")
    opt_state = meta.get("optimizer_state")
    slots = 0
    if comp is not None:
        comp = _dict(comp, "compile")
        clip = _dict(comp.pop("clip", {"norm": None, "value": None}), "compile.clip", ("norm", "value"))
        comp = _dict(comp, "compile", ("loss", "optimizer", "schedule"))
        clip_args = {f"clip_grad_{k}": None if clip[k] is None else _float(clip[k], f"compile.clip.{k}")
                     for k in ("norm", "value")}
        from .model import LOSSES
        loss = _str(comp["loss"], "compile.loss")
        if loss not in LOSSES:
            raise _Bad(f"compile.loss: unknown loss {loss!r:.80}")
        try:
            optimizer = _optimizer_from(comp["optimizer"])
            schedule = _schedule_from(comp["schedule"])
        except _Bad:
            raise
        except (TypeError, ValueError) as e:
            raise _Bad(f"compile: {e}") from None
        if opt_state is not None:
            opt_state = _dict(opt_state, "optimizer_state")
            # "names" (the slots' names) came with RMSprop and Adagrad; older files omit it.
            opt_state = _dict(opt_state, "optimizer_state",
                              ("slots", "steps", "names") if "names" in opt_state else ("slots", "steps"))
            slots = _int(opt_state["slots"], "optimizer_state.slots", 0, 3)
            file_slot_names = None
            if "names" in opt_state:
                file_slot_names = [_str(n, "optimizer_state.names[]")
                                   for n in _list(opt_state["names"], "optimizer_state.names", 3)]
                if len(file_slot_names) != slots:
                    raise _Bad(f"optimizer_state.names: {len(file_slot_names)} names for {slots} slots")
            if opt_state["steps"] != "optimizer.steps":
                raise _Bad("optimizer_state.steps: expected 'optimizer.steps'")
            _check_tensor(keys, "optimizer.steps", (len(params),), np.int64, get_shape)
            for k in range(slots):
                for name, shape in plan.params.items():
                    _check_tensor(keys, f"optimizer.slot{k}.{name}", shape, dtype, get_shape)
    elif opt_state is not None:
        raise _Bad("optimizer_state: present without compile settings")
    rng = _dict(meta.get("rng", {"shuffle": None, "core": None}), "rng", ("shuffle", "core"))

    # Every header check passed: build the model (the core allocates the declared, checked
    # parameters), then read the data.
    model = _build(plan)
    model_params = model.parameters()
    if list(model_params) != params:
        raise _Bad(f"params: expected {list(model_params)[:8]}, the file lists {params[:8]}")
    model_buffers = model.buffers()
    if list(model_buffers) != buffers:
        raise _Bad(f"buffers: expected {list(model_buffers)[:8]}, the file lists {buffers[:8]}")
    for name, view in model_params.items():  # the core's shapes agree with the plan's
        _check_tensor(keys, name, view.shape, view.dtype, get_shape)
    for name, view in model_buffers.items():
        _check_tensor(keys, name, view.shape, view.dtype, get_shape)
    variances = set(plan.variances)
    for name, view in model_params.items():
        a = get(name)
        if check_values:
            _check_values(name, a)
        view[...] = a
    for name, view in model_buffers.items():
        a = get(name)
        if check_values:
            _check_values(name, a, nonneg=name in variances, what="running variances")
        view[...] = a
    if comp is not None:
        try:
            model.compile(loss=loss, optimizer=optimizer, schedule=schedule, **clip_args)
        except ValueError as e:
            raise _Bad(f"compile: {e}") from None
        if opt_state is not None:
            slot_names = model._optimizer_state_names()
            if slots != len(slot_names):
                raise _Bad(f"optimizer_state.slots: {type(optimizer).__name__} keeps {len(slot_names)} "
                           f"state slots, the file has {slots}")
            if file_slot_names is not None and file_slot_names != list(slot_names):
                raise _Bad(f"optimizer_state.names: {type(optimizer).__name__} keeps {list(slot_names)}, "
                           f"the file has {file_slot_names}")
            nonneg = model._optimizer_state_nonneg()
            steps = get("optimizer.steps")
            if (steps < 0).any() or (steps > _MAX_INT).any():
                raise _Bad("tensor 'optimizer.steps': step counts must be in [0, 2**40]")
            state: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
            for i, name in enumerate(model_params):
                state[name] = {"step": int(steps[i])}
            for k, sname in enumerate(slot_names):
                what = _NONNEG_SLOTS.get(sname, f"{sname} values")
                for name in model_params:
                    key = f"optimizer.slot{k}.{name}"
                    a = get(key)
                    if check_values:
                        _check_values(key, a, nonneg=nonneg[k], what=what)
                    state[name][sname] = a
            model.load_optimizer_state(state)
    if rng["shuffle"] is not None:
        st = _dict(rng["shuffle"], "rng.shuffle")
        expected = model.rng_state["shuffle"].get("bit_generator")
        if st.get("bit_generator") != expected:
            raise _Bad(f"rng.shuffle.bit_generator: expected {expected!r}")
        try:
            model.rng_state = {"shuffle": st}
        except ValueError as e:
            raise _Bad(f"rng.shuffle: {str(e).split(': ', 1)[-1]}") from None
    if rng["core"] is not None:
        core = _list(rng["core"], "rng.core", 2)
        if len(core) != 2:
            raise _Bad("rng.core: expected [seed, draws]")
        model.rng_state = {"core": (_int(core[0], "rng.core[0]", 0, 2 ** 64 - 1),
                                    _int(core[1], "rng.core[1]", 0, 2 ** 64 - 1))}
    return model


def model_from_state(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> Any:
    """Rebuild a model from `model_to_state`'s output (validated like a file, except that NaN or
    infinite values are kept: an in-memory state is not a file from elsewhere)."""
    try:
        meta = _parse_meta(metadata)
        for k, v in tensors.items():
            if not isinstance(v, np.ndarray):
                raise _Bad(f"tensor {k!r}: expected a numpy array, got {type(v).__name__}")
        return _restore(meta, tensors, lambda k: (tensors[k].shape, tensors[k].dtype.name),
                        lambda k: tensors[k], check_values=False)
    except _Bad as e:
        raise ValueError(f"model state: {e}") from None


# ---------------------------------------------------------------------------- files
def _safetensors() -> Any:
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401
    except ImportError:
        raise ImportError("saving and loading models needs the safetensors package: "
                          "pip install safetensors (or pip install 'layerprop[io]')") from None
    return safetensors


_ST_DTYPES = {"F32": "float32", "F64": "float64", "I64": "int64", "F16": "float16", "BF16": "bfloat16",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3",
              "F8_E5M2": "float8_e5m2"}
_ST_ITEMSIZE = {"F32": 4, "F64": 8, "I64": 8, "F16": 2, "BF16": 2, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
_ST_NUMPY = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}  # all a layerprop file needs


def _parse_safetensors(buf: Any) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...], int, int]], Dict[str, str]]:
    """The header of a safetensors buffer: {name: (dtype, shape, start, end)} (offsets into
    `buf`) and the metadata. Only the header is read; every offset is checked against the
    buffer (the tensors must tile the data exactly, as the format requires)."""
    total = len(buf)
    if total < 8:
        raise _Bad(f"not a safetensors file ({total} bytes, shorter than the header length field)")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n > MAX_HEADER_BYTES:
        raise _Bad(f"not a safetensors file or too large a header ({n} bytes, the limit is {MAX_HEADER_BYTES})")
    if n < 2 or 8 + n > total:
        raise _Bad(f"not a safetensors file (header of {n} bytes in a file of {total})")
    try:
        header = json.loads(bytes(buf[8:8 + n]).decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise _Bad(f"not a safetensors file (header is not JSON: {str(e)[:100]})") from None
    if not isinstance(header, dict):
        raise _Bad("not a safetensors file (header is not a JSON object)")
    data_len = total - 8 - n
    metadata: Dict[str, str] = {}
    entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
    for k, v in header.items():
        if k == "__metadata__":
            if v is None:
                continue
            md = _dict(v, "safetensors __metadata__")
            for mk, mv in md.items():
                if not isinstance(mv, str):
                    raise _Bad(f"safetensors __metadata__[{mk!r:.80}]: expected a string")
            metadata = md
            continue
        what = f"tensor {k!r:.80} (safetensors header)"
        v = _dict(v, what, ("dtype", "shape", "data_offsets"))
        dt = v["dtype"]
        if not isinstance(dt, str) or dt not in _ST_ITEMSIZE:
            raise _Bad(f"{what}: unknown dtype {dt!r:.40}")
        shape = tuple(_int(s, f"{what} shape", 0) for s in _list(v["shape"], f"{what} shape", 64))
        offs = _list(v["data_offsets"], f"{what} data_offsets", 2)
        if len(offs) != 2:
            raise _Bad(f"{what}: data_offsets must be [begin, end]")
        begin = _int(offs[0], f"{what} data_offsets", 0, data_len)
        end = _int(offs[1], f"{what} data_offsets", begin, data_len)
        if end - begin != math.prod(shape) * _ST_ITEMSIZE[dt]:
            raise _Bad(f"{what}: {end - begin} bytes of data for shape {shape} of {dt}")
        entries[k] = (dt, shape, 8 + n + begin, 8 + n + end)
    pos = 8 + n
    for _dt, _shape, begin, end in sorted(entries.values(), key=lambda e: (e[2], e[3])):
        if begin != pos:
            raise _Bad("not a valid safetensors file (tensor data overlaps or leaves gaps)")
        pos = end
    if pos != total:
        raise _Bad("not a valid safetensors file (bytes after the last tensor)")
    return entries, metadata


def _load_bytes(buf: Any, name: str = "<bytes>") -> Any:
    """lp.load on the bytes of a file (bytes, bytearray, memoryview or mmap): a ValueError
    naming `name` for anything that is not a valid layerprop file."""
    try:
        entries, metadata = _parse_safetensors(buf)

        def get_shape(k: str) -> Tuple[Tuple[int, ...], str]:
            dt, shape, _b, _e = entries[k]
            return shape, _ST_DTYPES[dt]

        def get(k: str) -> np.ndarray:
            dt, shape, begin, _e = entries[k]
            if dt not in _ST_NUMPY:  # every tensor read has had its dtype checked
                raise _Bad(f"tensor {k!r}: unexpected dtype {_ST_DTYPES[dt]}")
            return np.frombuffer(buf, dtype=_ST_NUMPY[dt], count=math.prod(shape), offset=begin).reshape(shape)

        meta = _parse_meta(metadata)
        return _restore(meta, entries, get_shape, get)
    except _Bad as e:
        raise ValueError(f"{name}: {e}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
        raise ValueError(f"{name}: invalid layerprop file ({type(e).__name__}: {str(e)[:200]})") from None


def save(model: Any, path: PathLike, include_optimizer: bool = True, *,
         extra_metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write `model` to `path` (a safetensors file) atomically: a temporary file in the same
    folder, then os.replace, so a reader never sees a half-written file. extra_metadata:
    more string entries for the file's metadata (ignored by load)."""
    st = _safetensors()
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    tensors, metadata = model_to_state(model, include_optimizer=include_optimizer)
    for k, v in (extra_metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str) or k == META_KEY:
            raise ValueError(f"extra_metadata: expected str keys (not {META_KEY!r}) and str values, got {k!r}")
        metadata[k] = v
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    try:
        os.close(fd)
        st.numpy.save_file(dict(tensors), tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path: PathLike) -> Any:
    """Read a model written by `model.save`: same architecture, parameters (bitwise), compile
    settings and, if saved, optimizer state, so training continues where it stopped.
    A file that is not a valid layerprop safetensors file raises ValueError (a missing or
    unreadable one OSError); see docs/saving.md for the limits a file must respect."""
    _safetensors()
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file: {path!r}")
    # Read, not memory-mapped: a mapped file that another process truncates kills the reader
    # with SIGBUS; a read file can only come back short, which the checks refuse.
    with open(path, "rb") as fh:
        buf = fh.read()
    return _load_bytes(buf, path)
