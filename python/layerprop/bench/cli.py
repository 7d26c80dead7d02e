"""The `layerprop bench` subcommand (registered by layerprop.cli)."""
from __future__ import annotations

from typing import List

from .harness import run
from .specs import CASES
from .table import format_table


# --------------------------------------------------------------------------------------------
# The `layerprop bench` subcommand (registered by cli.build_parser).

def _thread_list(text: str) -> List[int]:
    import argparse
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of thread counts >= 1 such as 1,2; got {text!r}")
        if n not in out:
            out.append(n)
    return out


def _case_list(text: str) -> List[str]:
    import argparse
    by_lower = {c.lower(): c for c in CASES}
    out = []
    for part in text.split(","):
        c = by_lower.get(part.strip().lower())
        if c is None:
            raise argparse.ArgumentTypeError(
                f"unknown case {part.strip()!r} in {text!r}; expected a comma-separated list of "
                f"{','.join(CASES)}")
        if c not in out:
            out.append(c)
    return out


def add_parser(subparsers) -> None:
    """Register `layerprop bench` on the CLI's subparsers."""
    s = subparsers.add_parser(
        "bench", help="time layerprop against PyTorch, NumPy and scikit-learn in one table",
        description="Time training steps of the reference models (T, S, M, L), batch-1 inference, "
                    "GEMM and a digits epoch against PyTorch eager, NumPy, torch.mm and "
                    "scikit-learn, A/B interleaved, and print one table: medians, ratio "
                    "(peer / ours), GFLOP/s and % of the measured GEMM peak.")
    s.add_argument("--quick", action="store_true", help="few samples: a smoke run, rough figures")
    s.add_argument("--threads", dest="bench_threads", type=_thread_list, default=[1, 2],
                   metavar="N[,N...]", help="thread counts to run at (default 1,2)")
    s.add_argument("--cases", type=_case_list, default=list(CASES), metavar="CASE[,CASE...]",
                   help=f"which cases (default all: {','.join(CASES)})")
    s.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    s.add_argument("--ranks", type=int, choices=[0, 2], default=0,
                   help="2: also time M and L as 2 MPI ranks x 1 thread (needs the [mpi] extra)")
    s.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    import sys

    def progress(msg: str) -> None:
        print(f"layerprop bench: {msg} ...", file=sys.stderr, flush=True)

    report = run(args.cases, args.bench_threads, quick=args.quick, progress=progress)
    print(format_table(report, markdown=args.markdown))
    if args.ranks:
        from .distributed import two_rank_line
        progress("2 ranks x 1 thread (mpiexec)")
        line = two_rank_line(0.2 if args.quick else 1.0)
        print(f"\n{line}" if line else "\n2 ranks: skipped (no mpi4py or mpiexec; pip install 'layerprop[mpi]')")
    return 0
