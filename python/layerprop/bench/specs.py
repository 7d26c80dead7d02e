"""The reference models of the benchmarks (DESIGN.md) and the FLOP counts of their steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


# --------------------------------------------------------------------------------------------
# The reference models (DESIGN.md): sizes, loss, optimizer, batch.


@dataclass(frozen=True)
class ModelSpec:
    name: str
    sizes: Tuple[int, ...]
    loss: str                      # "mse" or "cross_entropy"
    optimizer: str                 # "sgd", "sgd_momentum" or "adam"
    batch: int

    @property
    def layers(self) -> List[Tuple[int, int]]:
        return list(zip(self.sizes[:-1], self.sizes[1:]))


MODELS: Dict[str, ModelSpec] = {
    "T1": ModelSpec("T b1", (16, 64, 64, 1), "mse", "sgd", 1),
    "T32": ModelSpec("T b32", (16, 64, 64, 1), "mse", "sgd", 32),
    "S": ModelSpec("S b32", (784, 128, 10), "cross_entropy", "sgd_momentum", 32),
    "M": ModelSpec("M b256", (784, 512, 512, 10), "cross_entropy", "adam", 256),
    "L": ModelSpec("L b512", (1024, 2048, 2048, 1024), "mse", "adam", 512),
}
# Optimizer settings, identical on both sides (PyTorch's update rules).
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.01)),
    "sgd_momentum": ("SGD", dict(lr=0.01, momentum=0.9)),
    "adam": ("Adam", dict(lr=1e-3)),
}
INFER_MODELS = ("T", "M")          # batch-1 inference
# Batches at which predict is timed against onnxruntime (the graph exported by to_onnx).
INFER_BATCHES = {"T": (1, 256), "M": (1, 16, 64, 256, 1024)}
CASES = ("T1", "T32", "S", "M", "L", "gemm", "infer", "digits")

# GEMM shapes: (label, m, n, k, trans_a, trans_b) for op(a) (m,k) @ op(b) (k,n).
# The MLP shapes are one Linear of M (784 -> 512, batch 256) and of L (2048 -> 2048, batch 512):
# forward x @ w^T (NT), weight gradient dy^T @ x (TN), input gradient dy @ w (NN).
GEMM_SQUARE = (64, 128, 256, 512, 1024, 2048)
GEMM_SHAPES: List[Tuple[str, int, int, int, bool, bool]] = (
    [(f"{s}^3", s, s, s, False, False) for s in GEMM_SQUARE]
    + [("M fwd NT", 256, 512, 784, False, True),
       ("M wgrad TN", 512, 784, 256, True, False),
       ("M igrad NN", 256, 784, 512, False, False),
       ("L fwd NT", 512, 2048, 2048, False, True),
       ("L wgrad TN", 2048, 2048, 512, True, False),
       ("L igrad NN", 512, 2048, 2048, False, False)]
)


def train_flops(spec: ModelSpec) -> float:
    """Matrix-product FLOPs of one training step: forward, weight gradient, and input gradient
    of every layer but the first."""
    n = spec.batch
    f = 0.0
    for i, (a, b) in enumerate(spec.layers):
        f += 2.0 * n * a * b * (2 if i == 0 else 3)
    return f


def infer_flops(sizes: Sequence[int], batch: int = 1) -> float:
    return sum(2.0 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))


DIGITS_SIZES = (64, 128, 10)   # the digits case: 64-128-10 ReLU, batch 32
DIGITS_BATCH = 32


def _torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def gemm_operands(m: int, n: int, k: int, trans_a: bool, trans_b: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b
