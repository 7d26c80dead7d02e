"""ONNX export (the `[onnx]` extra): `model.to_onnx(path)` writes the model in inference mode
(dropout is the identity, BatchNorm1d uses its running statistics) as an ONNX graph that
onnxruntime runs with the same outputs as `model.predict`, to float32 rounding.

Every layer maps to one standard operator: Linear -> Gemm (transB=1: the weight stays in
PyTorch's (out, in) layout), ReLU / LeakyReLU / Tanh / Sigmoid / Identity -> their operators,
GELU -> Gelu (exact erf form), SiLU -> Sigmoid and Mul, ELU -> Elu, Softplus(beta, threshold)
-> Where(beta x > threshold, x, softplus(beta x) / beta) as PyTorch, Dropout -> Identity, BatchNorm1d -> BatchNormalization,
LayerNorm -> LayerNormalization, add -> Add, concat -> Concat(axis=1). A weight used twice is
one initializer read by two nodes. The batch dimension is symbolic ("N").
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from . import layers as L

__all__ = ["to_onnx", "model_proto", "OPSET"]

OPSET = 20  # Gelu (20), LayerNormalization (17)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError("to_onnx needs the onnx package: pip install 'layerprop[onnx]'") from None
    return onnx


def model_proto(model: Any, output: Optional[str] = None, probabilities: Optional[str] = None) -> Any:
    """The ModelProto of `model` (an lp.Model) in inference mode. probabilities: None (raw
    outputs, as predict), "softmax" or "sigmoid" appended (class probabilities), "binary" (one
    logit -> [1 - p, p], scikit-learn's predict_proba of a binary classifier) or "exp" (a
    log-link output: Poisson rates)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper
    from .model import Model
    if not isinstance(model, Model):
        raise TypeError(f"model: expected an lp.Model, got {type(model).__name__}")
    if probabilities not in (None, "softmax", "sigmoid", "binary", "exp"):
        raise ValueError(f"probabilities: expected None, 'softmax', 'sigmoid', 'binary' or 'exp', got {probabilities!r}")
    np_dtype = np.dtype(model._np_dtype)
    elem = TensorProto.FLOAT if np_dtype == np.float32 else TensorProto.DOUBLE
    params = model.parameters()
    buffers = model.buffers()
    inits: Dict[str, Any] = {}

    def init(name: str, array: np.ndarray) -> str:
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(array, dtype=np_dtype), name)
        return name

    order = model._order
    names: Dict[int, str] = {}
    nodes: List[Any] = []
    for i, t in enumerate(order):
        out = "X" if i == 0 else f"t{i}"
        names[id(t)] = out
        if i == 0:
            continue
        ins = [names[id(u)] for u in t.inputs]
        layer = t.layer
        if t.op == "add":
            acc = ins[0]
            for k, other in enumerate(ins[1:]):
                dst = out if k == len(ins) - 2 else f"{out}_add{k}"
                nodes.append(helper.make_node("Add", [acc, other], [dst]))
                acc = dst
            continue
        if t.op == "concat":
            nodes.append(helper.make_node("Concat", ins, [out], axis=1))
            continue
        assert layer is not None
        if isinstance(layer, L.Linear):
            p = model._layer_prefix[id(layer)]
            w = init(f"{p}.weight", params[f"{p}.weight"])
            gemm_in = [ins[0], w] + ([init(f"{p}.bias", params[f"{p}.bias"])] if layer.bias else [])
            nodes.append(helper.make_node("Gemm", gemm_in, [out], transB=1))
        elif isinstance(layer, L.BatchNorm1d):
            p = model._layer_prefix[id(layer)]
            n = layer.num_features
            scale = params[f"{p}.weight"] if layer.affine else np.ones(n)
            bias = params[f"{p}.bias"] if layer.affine else np.zeros(n)
            nodes.append(helper.make_node(
                "BatchNormalization",
                [ins[0], init(f"{p}.weight", scale), init(f"{p}.bias", bias),
                 init(f"{p}.running_mean", buffers[f"{p}.running_mean"]),
                 init(f"{p}.running_var", buffers[f"{p}.running_var"])],
                [out], epsilon=float(layer.eps)))
        elif isinstance(layer, L.LayerNorm):
            p = model._layer_prefix[id(layer)]
            nodes.append(helper.make_node(
                "LayerNormalization", [ins[0], init(f"{p}.weight", params[f"{p}.weight"]),
                                       init(f"{p}.bias", params[f"{p}.bias"])],
                [out], axis=-1, epsilon=float(layer.eps)))
        elif isinstance(layer, L.LeakyReLU):
            nodes.append(helper.make_node("LeakyRelu", ins, [out], alpha=float(layer.negative_slope)))
        elif isinstance(layer, L.GELU):
            nodes.append(helper.make_node("Gelu", ins, [out], approximate="none"))
        elif isinstance(layer, L.SiLU):
            nodes.append(helper.make_node("Sigmoid", ins, [f"{out}_sig"]))
            nodes.append(helper.make_node("Mul", [ins[0], f"{out}_sig"], [out]))
        elif isinstance(layer, L.ELU):
            nodes.append(helper.make_node("Elu", ins, [out], alpha=float(layer.alpha)))
        elif isinstance(layer, L.Softplus):
            beta = init(f"{out}_beta", np.full(1, layer.beta))
            thr = init(f"{out}_threshold", np.full(1, layer.threshold))
            one = init(f"{out}_one", np.ones(1))
            # softplus(z) = max(z, 0) + log(1 + exp(-|z|)): never overflows, and float64 too
            # (onnxruntime's Softplus is float32 only)
            step = [("Mul", [ins[0], beta], "bx"), ("Relu", ["bx"], "pos"), ("Abs", ["bx"], "abs"),
                    ("Neg", ["abs"], "nabs"), ("Exp", ["nabs"], "e"), ("Add", [one, "e"], "e1"),
                    ("Log", ["e1"], "log"), ("Add", ["pos", "log"], "sp"), ("Div", ["sp", beta], "spb")]
            for op, args, dst in step:
                args = [a if a in (ins[0], beta, one) else f"{out}_{a}" for a in args]
                nodes.append(helper.make_node(op, args, [f"{out}_{dst}"]))
            nodes.append(helper.make_node("Greater", [f"{out}_bx", thr], [f"{out}_lin"]))
            nodes.append(helper.make_node("Where", [f"{out}_lin", ins[0], f"{out}_spb"], [out]))
        elif isinstance(layer, (L.ReLU, L.Tanh, L.Sigmoid, L.Identity, L.Dropout)):
            op = {L.ReLU: "Relu", L.Tanh: "Tanh", L.Sigmoid: "Sigmoid", L.Identity: "Identity",
                  L.Dropout: "Identity"}[type(layer)]
            nodes.append(helper.make_node(op, ins, [out]))
        else:
            raise TypeError(f"to_onnx: no ONNX mapping for {layer.describe()}")
    last = names[id(order[-1])]
    y = output or "Y"
    width = model.out_features
    if probabilities == "softmax":
        nodes.append(helper.make_node("Softmax", [last], [y], axis=1))
    elif probabilities == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [last], [y]))
    elif probabilities == "exp":  # a log-link output (poisson): the predicted rate
        nodes.append(helper.make_node("Exp", [last], [y]))
    elif probabilities == "binary":
        nodes.append(helper.make_node("Sigmoid", [last], ["p1"]))
        nodes.append(helper.make_node("Sub", [init("one", np.ones(1)), "p1"], ["p0"]))
        nodes.append(helper.make_node("Concat", ["p0", "p1"], [y], axis=1))
        width = 2
    else:
        nodes.append(helper.make_node("Identity", [last], [y]))
    graph = helper.make_graph(
        nodes, "layerprop",
        [helper.make_tensor_value_info("X", elem, ["N", model.in_features])],
        [helper.make_tensor_value_info(y, elem, ["N", width])],
        initializer=list(inits.values()))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="layerprop")
    proto.ir_version = min(proto.ir_version, 10)  # readable by onnxruntime releases of 2024 on
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model: Any, path: Any, probabilities: Optional[str] = None) -> None:
    """Write `model` as an ONNX file (see the module docstring); the write is atomic."""
    onnx = _onnx()
    proto = model_proto(model, probabilities=probabilities)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
