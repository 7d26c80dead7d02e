"""PyTorch interop: `model.to_torch()` and `lp.from_torch(module)` for Sequential models of
supported layers. Parameters are copied exactly (same layout: weight (out, in), PyTorch's
state_dict names), so a round trip is bitwise. torch is imported only when called."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, List, Optional


from . import layers as L

__all__ = ["to_torch", "from_torch", "SUPPORTED"]

SUPPORTED = tuple(str(cls.torch_name) for cls in L.LAYER_TYPES)
_FROM_TORCH = {str(cls.torch_name): cls for cls in L.LAYER_TYPES}


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
    tensors = OrderedDict(model.parameters())
    tensors.update(model.buffers())
    mods: "OrderedDict[str, Any]" = OrderedDict()
    layer: Any
    for i, layer in enumerate(model.layers):
        name = layer.name or str(i)
        if name in mods:
            raise ValueError(f"model: layer name {name!r} is used twice; torch.nn.Sequential needs unique names")
        if type(layer) not in L.LAYER_TYPES:  # a subclass may change what the layer computes
            raise TypeError(f"model: layer {i} ({layer.describe()}) has no PyTorch twin here; "
                            f"supported: {', '.join(SUPPORTED)}")
        own = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        m = layer.to_torch(torch, dtype, own)
        mods[name] = m
    out = nn.Sequential(mods)
    out.train(model.training)
    return out


def from_torch(module: Any, seed: Optional[int] = None) -> Any:
    """An lp.Sequential equal to `module`, a torch.nn.Sequential of Linear, ReLU, LeakyReLU,
    Tanh, Sigmoid, GELU (approximate='none'), Identity, Dropout, BatchNorm1d (running
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
        cls = _FROM_TORCH.get(type(m).__name__)
        if cls is None or type(m) is not getattr(nn, type(m).__name__, None):
            raise TypeError(f"module[{i}] ({name!r}: {type(m).__name__}({m.extra_repr()})) is not "
                            "supported by from_torch; "
                            f"supported: {', '.join(SUPPORTED)}")
        layer = cls.from_torch(m, nm, f"module[{i}] ({name!r}: {type(m).__name__}({m.extra_repr()}))")
        layers.append(layer)
    if not layers:
        raise ValueError("module: an empty torch.nn.Sequential")
    model = Sequential(*layers, dtype=dtype, seed=seed)
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()
             if not k.endswith(".num_batches_tracked")}
    targets = OrderedDict(model.parameters())
    targets.update(model.buffers())
    if sorted(state) != sorted(targets):
        raise ValueError(f"module: state_dict names {sorted(state)} do not match {sorted(targets)}")
    for k, v in targets.items():
        if state[k].dtype != v.dtype:
            raise ValueError(f"module: {k} has dtype {state[k].dtype}, expected {v.dtype} like the parameters")
        v[...] = state[k]
    model.train() if module.training else model.eval()
    return model
