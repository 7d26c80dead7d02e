"""The integer codes shared with the core, read from the enums it binds (never re-declared)."""
from __future__ import annotations

from . import _core


def code(enum_name: str, member: str) -> int:
    """The value of _core.<enum_name>.<member>, e.g. code("OptKind", "Adam") == 2."""
    return int(getattr(getattr(_core, enum_name), member).value)
