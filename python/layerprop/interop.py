"""PyTorch interop: `model.to_torch()` and `lp.from_torch(module)` for Sequential models of
supported layers. Parameters are copied exactly (same layout: weight (out, in), PyTorch's
state_dict names), so a round trip is bitwise. torch is imported only when called."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional

import numpy as np

from . import layers as L

__all__ = ["to_torch", "from_torch", "SUPPORTED"]

SUPPORTED = ("Linear", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "ELU", "Softplus", "Identity", "Dropout",
             "BatchNorm1d", "LayerNorm")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs torch: pip install 'layerprop[torch]'") from None
    return torch


def to_torch(model: Any) -> Any:
    """A torch.nn.Sequential equal to `model` (a copy: same dtype, parameters, BatchNorm
    running statistics, names and train/eval mode)."""
    from .model import Sequential
    torch = _torch()
    nn = torch.nn
    if not isinstance(model, Sequential):
        raise TypeError(f"model: to_torch supports lp.Sequential models; got {type(model).__name__} "
                        "(a graph model has no torch.nn.Sequential twin)")
    dtype = torch.float32 if model.dtype == "float32" else torch.float64
    params = model.parameters()
    buffers = model.buffers() if hasattr(model, "buffers") else {}

    def copy_into(t: Any, key: str, src: Any) -> None:
        with torch.no_grad():
            t.copy_(torch.from_numpy(np.array(src[key])))
    mods: "OrderedDict[str, Any]" = OrderedDict()
    layer: Any
    for i, layer in enumerate(model._seq_layers):
        name = layer.name or str(i)
        if name in mods:
            raise ValueError(f"model: layer name {name!r} is used twice; torch.nn.Sequential needs unique names")
        kind = type(layer)
        if kind is L.Linear:
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias, dtype=dtype)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.array(params[f"{name}.weight"])))
                if layer.bias:
                    m.bias.copy_(torch.from_numpy(np.array(params[f"{name}.bias"])))
        elif kind is L.ReLU:
            m = nn.ReLU()
        elif kind is L.LeakyReLU:
            m = nn.LeakyReLU(negative_slope=layer.negative_slope)
        elif kind is L.Tanh:
            m = nn.Tanh()
        elif kind is L.Sigmoid:
            m = nn.Sigmoid()
        elif kind is L.GELU:
            m = nn.GELU(approximate="none")
        elif kind is L.SiLU:
            m = nn.SiLU()
        elif kind is L.ELU:
            m = nn.ELU(alpha=layer.alpha)
        elif kind is L.Softplus:
            m = nn.Softplus(beta=layer.beta, threshold=layer.threshold)
        elif kind is L.Identity:
            m = nn.Identity()
        elif kind is L.Dropout:
            m = nn.Dropout(p=layer.p)
        elif kind is getattr(L, "BatchNorm1d", None):
            m = nn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                               affine=layer.affine, dtype=dtype)
            if layer.affine:
                copy_into(m.weight, f"{name}.weight", params)
                copy_into(m.bias, f"{name}.bias", params)
            copy_into(m.running_mean, f"{name}.running_mean", buffers)
            copy_into(m.running_var, f"{name}.running_var", buffers)
        elif kind is getattr(L, "LayerNorm", None):
            m = nn.LayerNorm(layer.num_features, eps=layer.eps, dtype=dtype)
            copy_into(m.weight, f"{name}.weight", params)
            copy_into(m.bias, f"{name}.bias", params)
        else:
            raise TypeError(f"model: layer {i} ({layer.describe()}) has no PyTorch twin here; "
                            f"supported: {', '.join(SUPPORTED)}")
        mods[name] = m
    out = nn.Sequential(mods)
    out.train(model.training)
    return out


def from_torch(module: Any, seed: Optional[int] = None) -> Any:
    """An lp.Sequential equal to `module`, a torch.nn.Sequential of Linear, ReLU, LeakyReLU,
    Tanh, Sigmoid, GELU (approximate='none'), SiLU, ELU, Softplus (beta > 0), Identity, Dropout, BatchNorm1d (running
    statistics included; num_batches_tracked is dropped) and LayerNorm (1-D, affine). The dtype follows the
    module's parameters (float32 or float64); names other than the position are kept."""
    from .model import Sequential
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"module: expected a torch.nn.Sequential, got {type(module).__name__}")
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) > 1:
        raise ValueError(f"module: parameters of mixed dtypes {sorted(str(d) for d in dtypes)}")
    if dtypes and dtypes.pop() not in (torch.float32, torch.float64):
        raise ValueError(f"module: parameters must be float32 or float64, got {next(module.parameters()).dtype}")
    if any(p.device.type != "cpu" for p in module.parameters()):
        raise ValueError("module: parameters must be on the CPU (call module.cpu() first)")
    first = next(module.parameters(), None)
    dtype = "float64" if first is not None and first.dtype == torch.float64 else "float32"
    layers: List[L.Layer] = []
    for i, (name, m) in enumerate(module.named_children()):
        nm = None if name == str(i) else name
        kind = type(m)
        if kind is nn.Linear:
            layer: L.Layer = L.Linear(m.in_features, m.out_features, bias=m.bias is not None, name=nm)
        elif kind is nn.ReLU:
            layer = L.ReLU(name=nm)
        elif kind is nn.LeakyReLU:
            layer = L.LeakyReLU(negative_slope=m.negative_slope, name=nm)
        elif kind is nn.Tanh:
            layer = L.Tanh(name=nm)
        elif kind is nn.Sigmoid:
            layer = L.Sigmoid(name=nm)
        elif kind is nn.GELU:
            if m.approximate != "none":
                raise ValueError(f"module[{i}] ({name!r}: GELU(approximate={m.approximate!r})): only "
                                 "GELU(approximate='none') is supported")
            layer = L.GELU(name=nm)
        elif kind is nn.SiLU:
            layer = L.SiLU(name=nm)
        elif kind is nn.ELU:
            layer = L.ELU(alpha=m.alpha, name=nm)
        elif kind is nn.Softplus:
            layer = L.Softplus(beta=m.beta, threshold=m.threshold, name=nm)
        elif kind is nn.Identity:
            layer = L.Identity(name=nm)
        elif kind is nn.Dropout:
            layer = L.Dropout(p=m.p, name=nm)
        elif kind is nn.BatchNorm1d and hasattr(L, "BatchNorm1d"):
            if not m.track_running_stats or m.momentum is None:
                raise ValueError(f"module[{i}] ({name!r}: BatchNorm1d({m.extra_repr()})): needs "
                                 "track_running_stats=True and a momentum (not None)")
            layer = L.BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine, name=nm)
        elif kind is nn.LayerNorm and hasattr(L, "LayerNorm"):
            if len(m.normalized_shape) != 1 or not m.elementwise_affine or m.bias is None:
                raise ValueError(f"module[{i}] ({name!r}: LayerNorm({m.extra_repr()})): only LayerNorm over "
                                 "the last dimension with elementwise_affine=True and bias=True is supported")
            layer = L.LayerNorm(m.normalized_shape[0], eps=m.eps, name=nm)
        else:
            raise TypeError(f"module[{i}] ({name!r}: {type(m).__name__}({m.extra_repr()})) is not "
                            "supported by from_torch; "
                            f"supported: {', '.join(SUPPORTED)}")
        layers.append(layer)
    if not layers:
        raise ValueError("module: an empty torch.nn.Sequential")
    model = Sequential(*layers, dtype=dtype, seed=seed)
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()
             if not k.endswith(".num_batches_tracked")}
    targets = OrderedDict(model.parameters())
    if hasattr(model, "buffers"):
        targets.update(model.buffers())
    if sorted(state) != sorted(targets):
        raise ValueError(f"module: state_dict names {sorted(state)} do not match {sorted(targets)}")
    for k, v in targets.items():
        if state[k].dtype != v.dtype:
            raise ValueError(f"module: {k} has dtype {state[k].dtype}, expected {v.dtype} like the parameters")
        v[...] = state[k]
    model.train() if module.training else model.eval()
    return model
