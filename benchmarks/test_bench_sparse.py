"""One epoch of fit on a TF-IDF-like sparse problem (10,000 x 20,000 at 1% density, CSR):
layerprop.sklearn.MLPClassifier against scikit-learn's MLPClassifier, both with scikit-learn's
defaults (100 ReLU units, Adam, batch 200) and the same CSR matrix, at 1 and 2 threads. Each
checks that its model learns. `python benchmarks/sparse.py` prints the medians and ratio."""

import math

import numpy as np
import pytest

from benchutil import THREADS, at_threads, run

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
from sparse import epoch_and_predict, estimators, tfidf_like  # noqa: E402

IMPLS = ["layerprop", "scikit-learn"]


@pytest.fixture(scope="module")
def data():
    return tfidf_like()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_threads", THREADS, ids=lambda n: f"{n}t")
def test_fit_tfidf_epoch(benchmark, data, n_threads, impl):
    benchmark.group = f"fit tfidf-epoch {n_threads}t"
    X, y = data
    est = estimators()[impl]
    with at_threads(n_threads):
        epoch_and_predict(est, X, y)
        first = est.loss_
        run(benchmark, lambda: epoch_and_predict(est, X, y), big=True)
        epoch_and_predict(est, X, y)
    last = est.loss_
    assert math.isfinite(first) and last < first < math.log(5), (impl, first, last)
    accuracy = float(np.mean(est.predict(X) == y))
    assert accuracy > 0.5, f"{impl}: training accuracy {accuracy:.3f}"
