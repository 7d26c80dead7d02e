"""The integer codes the core speaks: activations, graph nodes, stored layers, losses,
optimizers and update schedules. The one place in Python that knows them: read from the core's
enums (`_core.Act`, `_core.NodeKind`, ...), never re-declared. Every other module imports its
codes from here."""
from __future__ import annotations

from typing import Dict

from . import _core

__all__ = ["ACT", "NODE", "LAYER", "LOSS", "OPT", "SCHEDULE", "code"]


def _codes(enum_name: str) -> Dict[str, int]:
    """{member name: int} of the core's enum `enum_name` (a count sentinel, if bound, left out)."""
    members = getattr(_core, enum_name).__members__
    return {str(n): int(m.value) for n, m in members.items() if n != "Count"}


ACT = _codes("Act")             # activations (cpp/include/layerprop/common.hpp)
NODE = _codes("NodeKind")       # graph nodes (model.hpp)
LAYER = _codes("LayerKind")     # layers whose parameters or statistics the core stores
LOSS = _codes("LossKind")       # losses
OPT = _codes("OptKind")         # optimizers; None_ (0) is "not compiled"
SCHEDULE = _codes("ScheduleKind")  # update schedules


_TABLES = {"Act": ACT, "NodeKind": NODE, "LayerKind": LAYER, "LossKind": LOSS, "OptKind": OPT,
           "ScheduleKind": SCHEDULE}


def code(enum_name: str, member: str) -> int:
    """The value of the core's enum member, e.g. code("OptKind", "Adam") == 2."""
    return _TABLES[enum_name][member]
