"""Argument checks shared by every public entry point: one rule each for integers, real
numbers, ranges, probabilities and choices.

- An integer is a `numbers.Integral` that is not a bool: `3` and `np.int64(3)` pass, `True`,
  `3.0` and `"3"` do not.
- A real number is a `numbers.Real` that is not a bool (so `np.float32(0.5)` and `2` pass);
  it must be finite unless the check says otherwise.

Every refusal is a ValueError whose message starts with the argument's name:
"batch_size: expected a positive int, got True".
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Sequence, TypeVar

__all__ = ["is_int", "is_real", "integer", "positive_int", "real", "positive_float",
           "nonneg_float", "finite_float", "probability", "choice", "text_arg"]

T = TypeVar("T")


def is_int(v: object) -> bool:
    """An integer for layerprop: numbers.Integral (Python or NumPy), never a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: object) -> bool:
    """A real number for layerprop: numbers.Real (ints included), never a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _range_text(noun: str, lo: object, hi: object, lo_open: bool = False, hi_open: bool = False) -> str:
    """ "an int in [0, 9]", "a finite number > 0", "an int" ... """
    if lo is not None and hi is not None:
        return f"{noun} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{noun} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{noun} {'<' if hi_open else '<='} {hi}"
    return noun


def integer(v: object, name: str, lo: Optional[int] = None, hi: Optional[int] = None,
            what: Optional[str] = None) -> int:
    """v as an int in [lo, hi] (either bound optional), or a ValueError naming `name`.
    `what` replaces the default description ("an int >= 1", "an int in [0, 9]")."""
    if what is None:
        what = _range_text("an int", lo, hi)
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):  # type: ignore[operator]
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return int(v)  # type: ignore[call-overload]


def positive_int(v: object, name: str) -> int:
    """An int >= 1 ("expected a positive int")."""
    return integer(v, name, 1, what="a positive int")


def real(v: object, name: str, lo: Optional[float] = None, hi: Optional[float] = None, *,
         lo_open: bool = False, hi_open: bool = False, finite: bool = True,
         what: Optional[str] = None) -> float:
    """v as a float within the bounds (closed unless lo_open/hi_open), finite unless
    finite=False, or a ValueError naming `name`."""
    if what is None:  # two bounds say it is finite
        bounded = lo is not None and hi is not None
        what = _range_text("a finite number" if finite and not bounded else "a number", lo, hi, lo_open, hi_open)
    ok = is_real(v)
    if ok:
        f = float(v)  # type: ignore[arg-type]
        ok = not math.isnan(f) and (math.isfinite(f) or not finite)
        if ok and lo is not None:
            ok = f > lo if lo_open else f >= lo
        if ok and hi is not None:
            ok = f < hi if hi_open else f <= hi
    if not ok:
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return f


def positive_float(v: object, name: str, what: str = "a positive number") -> float:
    """A finite number > 0."""
    return real(v, name, 0.0, lo_open=True, what=what)


def nonneg_float(v: object, name: str, what: str = "a finite number >= 0") -> float:
    """A finite number >= 0."""
    return real(v, name, 0.0, what=what)


def finite_float(v: object, name: str, what: str = "a finite number") -> float:
    """Any finite number."""
    return real(v, name, what=what)


def probability(v: object, name: str, what: str = "a probability") -> float:
    """A number in [0, 1] ("expected a probability in [0, 1]")."""
    return real(v, name, 0.0, 1.0, what=f"{what} in [0, 1]")


def choice(v: T, name: str, choices: Sequence[Any]) -> T:
    """v if it is one of `choices` (compared with ==, strings only match strings)."""
    if not any(type(v) is type(c) and v == c for c in choices):
        shown = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}" if len(choices) > 1 else repr(choices[0])
        raise ValueError(f"{name}: expected {shown}, got {v!r}")
    return v


def text_arg(check: Callable[[Any, str], T], what: str, parse: Callable[[str], Any] = float
             ) -> Callable[[str], T]:
    """An argparse type: `text` parsed (float by default, int for ints), then `check`ed with
    the rules above; a refusal says "expected <what>, got '<text>'" (argparse adds the option)."""
    import argparse

    def convert(text: str) -> T:
        try:
            return check(parse(text), "value")
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    return convert
