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
    return _choice_list(text, CASES, "case")


def _choice_list(text: str, allowed, what: str) -> List[str]:
    import argparse
    by_lower = {c.lower(): c for c in allowed}
    out = []
    for part in text.split(","):
        c = by_lower.get(part.strip().lower())
        if c is None:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {part.strip()!r} in {text!r}; expected a comma-separated list of "
                f"{','.join(allowed)}")
        if c not in out:
            out.append(c)
    return out


def _scenario_models(text: str) -> List[str]:
    from .scenarios import SCENARIO_MODELS
    return _choice_list(text, tuple(SCENARIO_MODELS), "model")


def _scenario_settings(text: str) -> List[str]:
    from .scenarios import SETTINGS
    return _choice_list(text, SETTINGS, "setting")


def add_parser(subparsers) -> None:
    """Register `layerprop bench` on the CLI's subparsers."""
    s = subparsers.add_parser(
        "bench", help="time layerprop against PyTorch, NumPy and scikit-learn in one table",
        description="Time training steps of the reference models (T, S, M, L), batch-1 inference, "
                    "GEMM and a digits epoch against PyTorch eager, NumPy, torch.mm and "
                    "scikit-learn, A/B interleaved, and print one table: medians, ratio "
                    "(peer / ours), GFLOP/s and % of the measured GEMM peak.")
    s.add_argument("--quick", action="store_true", help="few samples: a smoke run, rough figures")
    s.add_argument("--threads", dest="bench_threads", type=_thread_list, default=None,
                   metavar="N[,N...]", help="thread counts to run at (default 1,2)")
    s.add_argument("--cases", type=_case_list, default=None, metavar="CASE[,CASE...]",
                   help=f"which cases (default all: {','.join(CASES)})")
    s.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    s.add_argument("--ranks", type=int, choices=[0, 2], default=0,
                   help="2: also time M and L as 2 MPI ranks x 1 thread (needs the [mpi] extra)")
    g = s.add_argument_group(
        "scenarios", "--scenarios times layerprop's training step at 1 and 2 threads while nothing "
                     "else runs (quiet), next to a process spinning on one core (busy), and with a "
                     "NumPy and a PyTorch matmul between steps (interleaved), and says per cell "
                     "whether the target is met; PyTorch eager is shown for comparison")
    g.add_argument("--scenarios", action="store_true",
                   help="run the scenario benchmark instead of the table above")
    g.add_argument("--models", dest="scenario_models", type=_scenario_models, default=None,
                   metavar="MODEL[,MODEL...]", help="which models (default all: D,S,M,L)")
    g.add_argument("--settings", dest="scenario_settings", type=_scenario_settings, default=None,
                   metavar="SETTING[,SETTING...]",
                   help="which settings (default all: quiet,busy,interleaved)")
    g.add_argument("--no-torch", dest="no_torch", action="store_true",
                   help="leave out PyTorch's rows (interleaved still calls PyTorch if installed)")
    g.add_argument("--blas-threads", dest="blas_threads", type=int, default=None, metavar="N",
                   help="limit NumPy's BLAS to N threads for the run (threadpoolctl), so that its "
                        "idle workers do not hold a core after each call (see docs/threads.md)")
    s.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    import sys

    def progress(msg: str) -> None:
        print(f"layerprop bench: {msg} ...", file=sys.stderr, flush=True)

    if args.scenarios:
        return _cmd_scenarios(args, progress)
    for name, value in (("--models", args.scenario_models), ("--settings", args.scenario_settings),
                        ("--no-torch", args.no_torch), ("--blas-threads", args.blas_threads)):
        if value:
            print(f"layerprop bench: error: {name} applies only with --scenarios", file=sys.stderr)
            return 2
    cases = list(CASES) if args.cases is None else args.cases
    bench_threads = [1, 2] if args.bench_threads is None else args.bench_threads
    report = run(cases, bench_threads, quick=args.quick, progress=progress)
    print(format_table(report, markdown=args.markdown))
    if args.ranks:
        from .distributed import two_rank_line
        progress("2 ranks x 1 thread (mpiexec)")
        line = two_rank_line(0.2 if args.quick else 1.0)
        print(f"\n{line}" if line else "\n2 ranks: skipped (no mpi4py or mpiexec; pip install 'layerprop[mpi]')")
    return 0


def _cmd_scenarios(args, progress) -> int:
    import sys
    from .scenarios import SCENARIO_MODELS, SETTINGS, format_scenarios, run_scenarios
    for name, value in (("--cases", args.cases), ("--threads", args.bench_threads),
                        ("--ranks", args.ranks)):
        if value:
            print(f"layerprop bench: error: {name} does not apply with --scenarios "
                  "(it always runs at 1 and 2 threads)", file=sys.stderr)
            return 2
    if args.blas_threads is not None and args.blas_threads < 1:
        print("layerprop bench: error: --blas-threads must be >= 1", file=sys.stderr)
        return 2
    try:
        rows = run_scenarios(args.scenario_models or list(SCENARIO_MODELS),
                             args.scenario_settings or list(SETTINGS), torch=not args.no_torch,
                             quick=args.quick, blas_threads=args.blas_threads, progress=progress)
    except ImportError as e:
        print(f"layerprop bench: error: {e}", file=sys.stderr)
        return 2
    print(format_scenarios(rows, markdown=args.markdown))
    import os
    tamed = []
    if args.blas_threads is not None:
        tamed.append(f"NumPy's BLAS limited to {args.blas_threads} thread(s) (--blas-threads)")
    if os.environ.get("OMP_WAIT_POLICY"):
        tamed.append(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (PyTorch's OpenMP workers)")
    if tamed:
        print(("\n" if args.markdown else "") + "Neighbours set: " + "; ".join(tamed) + ".")
    return 0
