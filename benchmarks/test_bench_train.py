"""One training step (forward, loss, backward, optimizer update) of the reference models of
DESIGN.md against the same nn.Sequential in PyTorch eager, at 1 and 2 threads:
T = 16-64-64-1 MSE SGD (batch 1 and 32), S = 784-128-10 cross-entropy SGD momentum (batch 32),
M = 784-512-512-10 cross-entropy Adam (batch 256), L = 1024-2048-2048-1024 MSE Adam (batch 512).

Both sides start from the same parameters on the same batch: each benchmark checks that the
first losses agree, and that after its timed steps the loss is finite and lower."""

import math

import pytest

from benchutil import THREADS, at_threads, run
from layerprop import bench

KEYS = ["T1", "T32", "S", "M", "L"]
IMPLS = ["layerprop", "pytorch"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}t")
@pytest.mark.parametrize("key", KEYS)
def test_train_step(benchmark, key, n_threads, impl):
    spec = bench.MODELS[key]
    benchmark.group = f"train {spec.name.replace(' ', '-')} {n_threads}t"
    if impl == "pytorch":
        pytest.importorskip("torch")
    with at_threads(n_threads):
        case = bench.train_case(key)
        step = case.ours if impl == "layerprop" else case.peer
        first = step()
        if case.peer is not None:   # the other side's first loss, from the same parameters
            other = case.peer() if impl == "layerprop" else case.ours()
            assert first == pytest.approx(other, rel=1e-4), f"first loss: {impl} {first} vs {other}"
        run(benchmark, step, big=key == "L")
        last = step()
    assert math.isfinite(first) and math.isfinite(last)
    assert last < first, f"{impl} {spec.name}: loss did not decrease ({first} -> {last})"
