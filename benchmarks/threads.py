"""Threads next to other work: layerprop's training step at 1 and 2 threads, in three settings.

    python benchmarks/threads.py                 # D, S, M and L in every setting, with PyTorch
    python benchmarks/threads.py --models S M --settings quiet interleaved --no-torch

The same as `layerprop bench --scenarios` (layerprop.bench.scenarios has the models, settings,
targets and measurement); this script keeps the space-separated option style and adds
`--rounds` and `--seconds`. No timing is asserted; the table says per cell whether the target
was met.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from layerprop.bench.scenarios import SCENARIO_MODELS, SETTINGS, format_scenarios, run_scenarios


def _names(values: List[str], allowed, option: str, parser: argparse.ArgumentParser) -> List[str]:
    """Space- or comma-separated names, case-insensitive, checked against `allowed`."""
    by_lower = {a.lower(): a for a in allowed}
    out: List[str] = []
    for part in (p.strip() for v in values for p in v.split(",")):
        name = by_lower.get(part.lower())
        if name is None:
            parser.error(f"argument {option}: unknown value {part!r}; expected some of {' '.join(allowed)}")
        if name not in out:
            out.append(name)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SCENARIO_MODELS), metavar="MODEL",
                   help=f"which models (default all: {' '.join(SCENARIO_MODELS)})")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), metavar="SETTING",
                   help=f"which settings (default all: {' '.join(SETTINGS)})")
    p.add_argument("--no-torch", action="store_true", help="layerprop only")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per cell (default 3)")
    p.add_argument("--seconds", type=float, default=None,
                   help="time budget per measurement of D, S and M (default 0.5)")
    p.add_argument("--quick", action="store_true", help="few steps: a smoke run, rough figures")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = p.parse_args(argv)
    models = _names(a.models, SCENARIO_MODELS, "--models", p)
    settings = _names(a.settings, SETTINGS, "--settings", p)
    if a.rounds is not None and a.rounds < 1:
        p.error("argument --rounds: expected a number >= 1")
    if a.seconds is not None and a.seconds < 0:
        p.error("argument --seconds: expected a number >= 0")

    def progress(msg: str) -> None:
        print(f"threads.py: {msg} ...", file=sys.stderr, flush=True)

    rows = run_scenarios(models, settings, torch=not a.no_torch, quick=a.quick, rounds=a.rounds,
                         seconds=a.seconds, progress=progress)
    print(format_scenarios(rows, markdown=a.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
