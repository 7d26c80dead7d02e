"""Inference of T (16-64-64-1) and M (784-512-512-10): layerprop's predict against the same
nn.Sequential under torch.no_grad() and against onnxruntime on the exported graph
(model.to_onnx), at batch 1 (and the larger batches of bench.INFER_BATCHES for onnxruntime), 1 and 2 threads. Each checks its output
against a float64 NumPy forward with the same parameters."""

import numpy as np
import pytest

from benchutil import THREADS, at_threads, rel_err, run
from layerprop import bench

IMPLS = ["layerprop", "pytorch", "onnxruntime"]


def numpy_forward(model, x):
    """float64 forward of a Linear-ReLU-...-Linear Sequential."""
    p = list(model.parameters().values())
    h = x.astype(np.float64)
    for i in range(0, len(p), 2):
        h = h @ p[i].astype(np.float64).T + p[i + 1]
        if i + 2 < len(p):
            h = np.maximum(h, 0.0)
    return h


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}t")
@pytest.mark.parametrize("key", bench.INFER_MODELS)
def test_infer_batch1(benchmark, key, n_threads, impl):
    benchmark.group = f"infer {key}-b1 {n_threads}t"
    if impl == "pytorch":
        pytest.importorskip("torch")
    if impl == "onnxruntime":
        pytest.importorskip("onnxruntime")
    case = bench.infer_case(key, with_peer=impl == "pytorch")
    fn = {"layerprop": case.ours, "pytorch": case.peer,
          "onnxruntime": bench.onnx_peer(case.model, case.x, n_threads) if impl == "onnxruntime" else None}[impl]
    with at_threads(n_threads):
        got = run(benchmark, fn)
    assert isinstance(got, np.ndarray) and got.shape == (1, case.sizes[-1])
    err = rel_err(got, numpy_forward(case.model, case.x))
    assert err <= 1e-5, f"{impl} {key}: rel_err {err:.2e}"


BATCHED = [(key, b) for key in bench.INFER_MODELS for b in bench.INFER_BATCHES[key] if b > 1]


@pytest.mark.parametrize("impl", ["layerprop", "onnxruntime"])
@pytest.mark.parametrize("key,batch", BATCHED, ids=[f"{k}-b{b}" for k, b in BATCHED])
def test_infer_batched(benchmark, key, batch, impl):
    """Batched predict (which keeps its packed weights between calls) against onnxruntime (which
    packs them when the session is made), one thread each."""
    benchmark.group = f"infer {key}-b{batch} 1t"
    if impl == "onnxruntime":
        pytest.importorskip("onnxruntime")
    case = bench.infer_case(key, with_peer=False)
    x = np.random.default_rng(1).standard_normal((batch, case.sizes[0]), dtype=np.float32)
    fn = (lambda: case.model.predict(x)) if impl == "layerprop" else bench.onnx_peer(case.model, x, 1)
    with at_threads(1):
        got = run(benchmark, fn)
    assert got.shape == (batch, case.sizes[-1])
    err = rel_err(got, numpy_forward(case.model, x))
    assert err <= 1e-5, f"{impl} {key}: rel_err {err:.2e}"
