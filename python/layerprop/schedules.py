"""Update schedules: how the layers are updated within one training step."""
from __future__ import annotations

__all__ = ["Schedule", "Simultaneous"]


class Schedule:
    """Base class of update schedules."""


class Simultaneous(Schedule):
    """Standard backprop: one backward pass, then every parameter is updated."""

    def __repr__(self) -> str:
        return "Simultaneous()"
