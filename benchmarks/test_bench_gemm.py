"""GEMM: layerprop's packed kernel against NumPy (OpenBLAS) and torch.mm (MKL), square 64..2048
and the three products of one Linear of M and of L (forward NT, weight gradient TN, input
gradient NN), at 1 and 2 threads. Each benchmark checks its product against float64 NumPy."""

import numpy as np
import pytest

from benchutil import THREADS, at_threads, rel_err, run
from layerprop import bench

IMPLS = ["layerprop", "numpy", "torch.mm"]
TOL = 5e-6           # float32 products against float64, relative to the largest entry (seen: <= 1e-6)

_operands = {}


def operands(shape):
    """(a, b, float64 reference) for one GEMM shape, made once per session."""
    if shape not in _operands:
        _label, m, n, k, ta, tb = shape
        a, b = bench.gemm_operands(m, n, k, ta, tb)
        _operands[shape] = (a, b, bench.gemm_reference(a, b, ta, tb))
    return _operands[shape]


def shape_id(shape):
    label, m, n, k, _ta, _tb = shape
    return label.replace(" ", "-").replace("^", "") if label.endswith("^3") else \
        f"{label.replace(' ', '-')}-{m}x{n}x{k}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}t")
@pytest.mark.parametrize("shape", bench.GEMM_SHAPES, ids=shape_id)
def test_gemm(benchmark, shape, n_threads, impl):
    label, m, n, k, ta, tb = shape
    benchmark.group = f"gemm {shape_id(shape)} {n_threads}t"
    if impl == "torch.mm":
        pytest.importorskip("torch")
    a, b, want = operands(shape)
    fn = bench.gemm_calls(a, b, ta, tb)[impl]
    with at_threads(n_threads):
        got = run(benchmark, fn, big=m * n * k >= 512 * 2048 * 2048)
    got = np.asarray(got)
    assert got.shape == (m, n) and got.dtype == np.float32
    err = rel_err(got, want)
    assert err <= TOL, f"{impl} {label} {m}x{n}x{k}: rel_err {err:.2e}"
