"""`layerprop bench`: layerprop against its peers (PyTorch eager, NumPy, torch.mm, scikit-learn)
on the reference models of DESIGN.md, A/B interleaved, in one table.

The case builders here (`train_case`, `infer_case`, `gemm_operands`, `digits_case`, ...) are also
what the pytest-benchmark suites in benchmarks/ run, so the report and the suites measure the
same thing.

Measurement: each case's callables (ours first, then the peers) are called in an interleaved
loop, rotating which one goes first each round, so that machine noise (other processes, clock
changes) falls on both sides alike. A sample is the mean of `inner` back-to-back calls, with
`inner` calibrated per callable so that one sample lasts about `sample_s`; the table reports
the median sample of each side. At more than one thread, each sample starts once the other
libraries' thread pools have stopped spinning (`settle`): several OpenMP/BLAS runtimes share
this process, which no real program does, and a spinning pool steals cores from the next call.

FLOP counts are those of the matrix products only (2*M*N*K each): forward, weight gradient and
input gradient (none for the first layer's input). Element-wise work, losses and optimizer
updates are not counted. "% peak" divides our achieved GFLOP/s by the GEMM peak measured at the
same thread count: the best GFLOP/s of `_core._gemm` on a 1024x1024x1024 float32 product.
"""
from __future__ import annotations

from . import jaxpeer
from .cli import add_parser
from .harness import FULL, QUICK, Report, Row, Settings, run
from .specs import (CASES, DIGITS_BATCH, DIGITS_SIZES, GEMM_SHAPES, GEMM_SQUARE, INFER_BATCHES, INFER_MODELS, MODELS,
                    OPTIMIZERS, ModelSpec, gemm_operands, infer_flops, train_flops)
from .table import COLUMNS, NOISY, format_table, machine_lines
from .timing import Timing, interleaved, measure_peak, settle, threads
from .twins import (InferCase, TrainCase, batch, build_model, digits_case, digits_data, digits_flops,
                    gemm_calls, gemm_reference, infer_case, onnx_peer, torch_twin,
                    train_case)

__all__ = [
    "MODELS", "CASES", "GEMM_SHAPES", "INFER_BATCHES", "INFER_MODELS", "ModelSpec", "TrainCase", "InferCase", "Row",
    "threads", "train_flops", "infer_flops", "build_model", "torch_twin", "train_case",
    "infer_case", "gemm_operands", "gemm_reference", "digits_data", "digits_case",
    "settle", "interleaved", "measure_peak", "Report", "run", "format_table", "add_parser", "jaxpeer",
]
