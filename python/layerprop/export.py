"""ONNX export (the `[onnx]` extra): `model.to_onnx(path)` writes the model in inference mode
(dropout is the identity, BatchNorm1d uses its running statistics) as an ONNX graph that
onnxruntime runs with the same outputs as `model.predict`, to float32 rounding.

Every layer maps to one standard operator: Linear -> Gemm (transB=1: the weight stays in
PyTorch's (out, in) layout), ReLU / LeakyReLU / Tanh / Sigmoid / Identity -> their operators,
GELU -> Gelu (exact erf form), Dropout -> Identity, BatchNorm1d -> BatchNormalization,
LayerNorm -> LayerNormalization, add -> Add, concat -> Concat(axis=1). A weight used twice is
one initializer read by two nodes. The batch dimension is symbolic ("N").
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np


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
    np_dtype = np.dtype(model.dtype)
    elem = TensorProto.FLOAT if np_dtype == np.float32 else TensorProto.DOUBLE
    tensors = dict(model.parameters())
    tensors.update(model.buffers())
    inits: Dict[str, Any] = {}

    def init(name: str, array: np.ndarray) -> str:
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(array, dtype=np_dtype), name)
        return name

    order = model.nodes
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
        p = model.layer_name(layer)
        own = {} if p is None else {k[len(p) + 1:]: v for k, v in tensors.items() if k.startswith(f"{p}.")}

        def layer_init(local: str, array: np.ndarray, prefix: Optional[str] = p) -> str:
            return init(f"{prefix}.{local}", array)
        nodes.extend(layer.to_onnx(helper, ins, out, layer_init, own))
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
