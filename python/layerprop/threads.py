"""The core's thread pool: how much work each kind of loop needs before it uses threads, and
the calibration that measures it (docs/threads.md).

Every parallel loop in the core names its kind of work and counts it in that kind's units
(multiply-adds for GEMMs, elements for element-wise loops, ...). A kind's threshold is the
number of units per thread below which one more thread costs more than it saves: a loop of
`units` work runs on min(lp.get_num_threads(), units // threshold) threads, and inline below
one threshold. The built-in thresholds were measured on the reference machine;
`layerprop calibrate` (or :func:`calibrate`) measures this machine's, applies them, and with
``--save`` keeps them in :func:`config_path`, which ``import layerprop`` reads.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from . import _core, validation

__all__ = ["KINDS", "thresholds", "set_thresholds", "defaults", "calibrate", "pool_stats", "config_path",
           "load_config", "save_config"]

KINDS = tuple(_core._work_thresholds())
_DEFAULTS = dict(_core._work_thresholds())
_FORMAT = "layerprop-threads-1"


def defaults() -> Dict[str, Optional[int]]:
    """The built-in thresholds (units per thread; None: never parallel)."""
    return dict(_DEFAULTS)


def thresholds() -> Dict[str, Optional[int]]:
    """The thresholds in force, by kind (units per thread; None: never parallel)."""
    return dict(_core._work_thresholds())


def set_thresholds(values: Mapping[str, Optional[int]]) -> None:
    """Set some kinds' thresholds (a positive number of units per thread, or None for never
    parallel). All values are checked before any is set."""
    if not isinstance(values, Mapping):
        raise TypeError(f"values: expected a mapping of kind to units, got {type(values).__name__}")
    checked = {}
    for kind, units in values.items():
        if kind not in KINDS:
            raise ValueError(f"values: unknown kind of work {kind!r}; kinds are {', '.join(KINDS)}")
        checked[kind] = None if units is None else validation.integer(units, f"values[{kind!r}]", 1)
    for kind, units in checked.items():
        _core._set_work_threshold(kind, units)


def pool_stats() -> Dict[str, int]:
    """The pool's counters: workers started, jobs run with workers, items the workers computed,
    jobs whose caller waited for another thread's item ("waits"), the time those waits took
    ("wait_ns"), waits far longer than the caller's own items ("stalls": a worker the OS
    descheduled mid-item), the spin time (microseconds) before an idle worker sleeps
    (LAYERPROP_SPIN_US), and the probe of other busy threads and processes: "foreign_samples"
    (every 16 ms at most per worker, while loops are large enough for threads) and
    "foreign_busy_samples" (those that found other work: loops then leave that many cores to it,
    rounded, until the next sample). When the last sample is stale (no loop for threads ran for
    over 1.5 intervals), the probe starts again and, until its next sample, counts the process's
    other threads that are runnable at that moment as busy cores ("runnable_checks", and
    "runnable_busy": those that found some; Linux).
    LAYERPROP_FOREIGN_PROBE=0 turns the probe off. "moves": sleeping workers that the caller
    waking them kept off its own CPU for that job ("preempted_spins": idle spins cut short
    because the worker was descheduled). "prewarms": loops too short to wait for a sleeping
    worker, which ran on the caller and woke the workers for the loops after them."""
    return dict(_core._pool_stats())


def config_path() -> Path:
    """Where `layerprop calibrate --save` writes and ``import layerprop`` reads the thresholds:
    $LAYERPROP_THREADS_FILE, else $XDG_CONFIG_HOME/layerprop/threads.json (~/.config/...)."""
    env = os.environ.get("LAYERPROP_THREADS_FILE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "layerprop" / "threads.json"


def calibrate(kinds: Optional[Iterable[str]] = None, *, budget: float = 0.05, margin: float = 1.3,
              apply: bool = True, save: bool = False, path: Union[str, os.PathLike, None] = None,
              progress=None) -> Dict[str, Any]:
    """Measure each kind of work serially and on the pool at sizes 2^12, 2^13, ..., 2^23 units and
    find the smallest size from which the pool is faster by the factor `margin` at two sizes in
    a row; half of it (two threads' worth) is the kind's threshold. `budget`: seconds per
    measurement. Run it on a quiet machine with the thread count you will train with
    (lp.set_num_threads); with one thread there is nothing to measure and nothing changes.

    Returns {"threads", "kinds": {kind: {"units_per_thread", "units", "serial_s",
    "pooled_s"}}}. `apply` sets the thresholds found (kinds that never gained: None, never
    parallel); `save` also writes them to `path` (default :func:`config_path`)."""
    budget = validation.positive_float(budget, "budget")
    margin = validation.positive_float(margin, "margin")
    if margin < 1:
        raise ValueError(f"margin: expected a factor >= 1, got {margin}")
    if budget > 10:
        raise ValueError(f"budget: expected at most 10 seconds per measurement, got {budget}")
    chosen = list(KINDS) if kinds is None else list(kinds)
    for k in chosen:
        if k not in KINDS:
            raise ValueError(f"kinds: unknown kind of work {k!r}; kinds are {', '.join(KINDS)}")
    result: Dict[str, Any] = {"threads": int(_core.get_num_threads()), "kinds": {}}
    for k in chosen:
        r = _core._calibrate(k, budget, margin)
        result["kinds"][k] = {key: r[key] for key in ("units_per_thread", "units", "serial_s", "pooled_s")}
        if progress is not None:
            progress(k, result["kinds"][k])
    if result["threads"] < 2:
        return result
    found = {k: v["units_per_thread"] for k, v in result["kinds"].items()}
    if apply:
        set_thresholds(found)
    if save:
        save_config(found, path, threads=result["threads"])
    return result


def save_config(values: Mapping[str, Optional[int]], path: Union[str, os.PathLike, None] = None, *,
                threads: Optional[int] = None) -> Path:
    """Write thresholds (as :func:`thresholds` returns them) to `path` (default
    :func:`config_path`) for later imports."""
    target = Path(path) if path is not None else config_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": _FORMAT, "threads": threads if threads is not None else int(_core.get_num_threads()),
           "simd": _core.build_info()["simd"], "units_per_thread": {k: values[k] for k in values}}
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, target)
    return target


def load_config(path: Union[str, os.PathLike, None] = None) -> bool:
    """Apply the thresholds saved at `path` (default :func:`config_path`). A missing file is
    not an error (returns False); an unreadable or invalid one warns and changes nothing."""
    target = Path(path) if path is not None else config_path()
    try:
        text = target.read_text()
    except FileNotFoundError:
        return False
    except OSError as e:
        warnings.warn(f"layerprop: cannot read the thread thresholds in {target}: {e}; using the built-in ones",
                      RuntimeWarning, stacklevel=2)
        return False
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} file")
        set_thresholds(doc["units_per_thread"])
    except (ValueError, TypeError, KeyError) as e:
        warnings.warn(f"layerprop: ignoring the thread thresholds in {target} ({e}); using the built-in ones; "
                      f"rerun `layerprop calibrate --save` to replace the file", RuntimeWarning, stacklevel=2)
        return False
    return True
