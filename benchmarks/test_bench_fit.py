"""One epoch of fit on scikit-learn's digits (1797 8x8 images): layerprop against scikit-learn's
MLPClassifier with the same network and optimizer (64-128-10 ReLU, cross-entropy, Adam lr 1e-3,
batch 32, shuffled, no L2 penalty), at 1 and 2 threads. scikit-learn runs one epoch per fit()
with max_iter=1 and warm_start=True; the ConvergenceWarning each such fit() raises is expected
and filtered in layerprop.bench.digits_case. Each checks that its model learns."""

import math

import numpy as np
import pytest

from benchutil import THREADS, at_threads, run
from layerprop import bench

IMPLS = ["layerprop", "scikit-learn"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}t")
def test_fit_digits_epoch(benchmark, n_threads, impl):
    benchmark.group = f"fit digits-epoch {n_threads}t"
    pytest.importorskip("sklearn")
    ours, peer, X, y, model, est = bench.digits_case()
    epoch = ours if impl == "layerprop" else peer
    with at_threads(n_threads):
        first = epoch()
        run(benchmark, epoch)
        last = epoch()
    assert math.isfinite(first) and math.isfinite(last)
    assert first < math.log(10), f"{impl}: first epoch's mean loss {first} is no better than chance"
    assert last < first, f"{impl}: loss did not decrease ({first} -> {last})"
    pred = model.predict(X).argmax(axis=1) if impl == "layerprop" else est.predict(X)
    accuracy = float(np.mean(pred == y))
    assert accuracy >= 0.85, f"{impl}: training accuracy {accuracy:.3f} after 3 or more epochs"
