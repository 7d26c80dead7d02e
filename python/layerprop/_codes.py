"""The integer codes the core speaks: activations, graph nodes, stored layers, losses,
optimizers and update schedules. The one place in Python that knows them: read from the core's
enums (`_core.Act`, `_core.NodeKind`, ...) where the core binds them, else the core's numbering
as declared in its headers. Every other module imports its codes from here."""
from __future__ import annotations

from typing import Dict, Sequence

from . import _core

__all__ = ["ACT", "NODE", "LAYER", "LOSS", "OPT", "SCHEDULE", "code"]


def _codes(enum_name: str, names: Sequence[str]) -> Dict[str, int]:
    """{member name: int} from the core's enum `enum_name` when it exists, else the numbering
    0, 1, 2, ... of `names` (the core's declaration order)."""
    codes = {n: i for i, n in enumerate(names)}
    enum = getattr(_core, enum_name, None)
    members = getattr(enum, "__members__", None)
    if members:  # the core's own numbering, members it added included
        codes = {str(n): int(getattr(m, "value", m)) for n, m in members.items()}
    return codes


# enum class Act (cpp/include/layerprop/common.hpp)
ACT = _codes("Act", ("Identity", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU"))
# enum class NodeKind (model.hpp)
NODE = _codes("NodeKind", ("Input", "Linear", "Activation", "Add", "Concat", "Dropout", "BatchNorm", "LayerNorm"))
# enum class LayerKind (model.hpp): layers whose parameters or statistics the core stores
LAYER = _codes("LayerKind", ("Linear", "BatchNorm", "LayerNorm"))
# enum class LossKind (common.hpp)
LOSS = _codes("LossKind", ("CrossEntropy", "MSE", "BCEWithLogits", "Poisson"))
# enum class OptKind (optim.hpp); None = 0 is "not compiled"
OPT = _codes("OptKind", ("None", "SGD", "Adam", "AdamW"))
# enum class ScheduleKind (model.hpp)
SCHEDULE = _codes("ScheduleKind", ("Simultaneous", "LayerwiseTopDown", "LayerwiseBottomUp", "LocoPropS", "LocoPropM"))


_TABLES = {"Act": ACT, "NodeKind": NODE, "LayerKind": LAYER, "LossKind": LOSS, "OptKind": OPT,
           "ScheduleKind": SCHEDULE}


def code(enum_name: str, member: str) -> int:
    """The value of the core's enum member, e.g. code("OptKind", "Adam") == 2."""
    return _TABLES[enum_name][member]
