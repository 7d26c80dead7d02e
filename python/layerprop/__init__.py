"""layerprop: fast, transparent neural-network training on the CPU.

A C++ core (SIMD kernels on its own thread pool) does the matmuls, activations, losses, backprop and
in-place optimizer updates; this package is the thin Python layer around it.
"""
from __future__ import annotations

from . import _core
from . import explain
from . import threads
from . import validation
from ._core import NonFiniteError
from .layers import (ELU, GELU, BatchNorm1d, Dropout, Identity, Input, Layer, LayerNorm, LeakyReLU,
                     Linear, ReLU, Sigmoid, SiLU, Softplus, SymbolicTensor, Tanh, add, concat)
from .model import Model, Sequential
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from .schedules import Layerwise, LocoProp, Schedule, Simultaneous
from .interop import from_torch
from .io import load
from .training import Callback, EarlyStopping, History, LambdaCallback, ModelCheckpoint, MovingTarget

__version__ = _core.build_info()["version"]

__all__ = [
    "__version__", "build_info", "set_num_threads", "get_num_threads",
    "Layer", "Linear", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "SiLU", "ELU", "Softplus",
    "Identity", "Dropout",
    "BatchNorm1d", "LayerNorm", "Input", "SymbolicTensor", "add", "concat", "Model", "Sequential",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Schedule", "Simultaneous", "Layerwise", "LocoProp", "Callback", "History",
    "load", "from_torch", "EarlyStopping", "ModelCheckpoint", "LambdaCallback", "MovingTarget",
    "explain", "threads", "NonFiniteError",
]

NonFiniteError.__doc__ = (
    "A training step met a non-finite loss or gradient (a RuntimeError). The step was not "
    "applied: parameters, optimizer state, BatchNorm running statistics and the dropout "
    "generator are as they were before it.")


def build_info() -> dict:
    """What this build runs: version, simd ("avx2+fma" or "scalar"), gemm_avx512 (the GEMM's
    AVX-512 micro-kernels, same results as AVX2), openmp, num_threads, compiler, and the CPU's
    features."""
    return _core.build_info()


def set_num_threads(n: int) -> None:
    """Threads the core uses from now on (default: all cores, or OMP_NUM_THREADS)."""
    n = validation.integer(n, "n", 1)
    if n > 1 and _core.forked_after_pool():
        import warnings
        warnings.warn("layerprop runs single-threaded in this process: it was forked after its parent "
                      "started layerprop's worker threads, which do not exist in a forked child (use the 'spawn' or "
                      "'forkserver' start method of multiprocessing for threaded children)",
                      RuntimeWarning, stacklevel=2)
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Threads the core uses."""
    return int(_core.get_num_threads())


threads.load_config()


def __getattr__(name: str):
    # lp.sklearn and lp.distributed are imported on first use, so `import layerprop` never
    # imports scikit-learn or mpi4py.
    if name in ("sklearn", "distributed"):
        import importlib
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'layerprop' has no attribute {name!r}")
