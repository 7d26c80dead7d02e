"""Real sizes, not only toy arrays: MNIST-shaped data (60,000 x 784) through fit, evaluate and
predict, and more than 4 million rows through a tiny model (the sizes at which fit and evaluate
used to read past the labels and crash). Marked `scale`; each test takes seconds."""
from __future__ import annotations

import numpy as np
import pytest

import layerprop as lp

pytestmark = pytest.mark.scale


@pytest.fixture(scope="module")
def mnist_shaped():
    rng = np.random.default_rng(0)
    X = rng.random((60000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60000)
    return X, y


def test_mnist_sized_fit_evaluate_predict(mnist_shaped):
    X, y = mnist_shaped
    m = lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=0)
    m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3))
    h = m.fit(X, y, epochs=1, batch_size=128, validation_data=(X[:10000], y[:10000]), progress=False)
    assert np.isfinite(h.history["loss"][0]) and 0 <= h.history["val_accuracy"][0] <= 1
    ev = m.evaluate(X, y)
    P = m.predict(X)
    assert P.shape == (60000, 10) and np.isfinite(P).all()
    # evaluate's accuracy is predict's argmax, over every row
    assert ev["accuracy"] == pytest.approx(float(np.mean(P.argmax(1) == y)), abs=1e-12)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_mnist_sized_predict_with_kept_weights_gives_the_same_bits(mnist_shaped, batch_size):
    """predict keeps the packed weights of a 784-512-512-10 model (also in calls of 16 rows) and
    reads them against x in place: the same bits as packing on every call."""
    from layerprop import _core
    X, _ = mnist_shaped
    m = lp.Sequential(lp.Linear(784, 512), lp.ReLU(), lp.Linear(512, 512), lp.ReLU(), lp.Linear(512, 10), seed=0)
    P = m.predict(X, batch_size=batch_size)
    assert m._core.packed_stats()["builds"] == 1
    _core._set_packed_weights(False)
    try:
        Q = m.predict(X, batch_size=batch_size)
    finally:
        _core._set_packed_weights(True)
    assert P.shape == (60000, 10)
    np.testing.assert_array_equal(P, Q)


def test_mnist_sized_mse_fit_in_float64():
    rng = np.random.default_rng(1)
    X = rng.random((60000, 784))
    Y = rng.random((60000, 4))
    m = lp.Sequential(lp.Linear(784, 16), lp.Tanh(), lp.Linear(16, 4), dtype="float64", seed=0)
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.05))
    h = m.fit(X, Y, epochs=1, batch_size=256, progress=False)
    assert np.isfinite(h.history["loss"][0])
    assert m.evaluate(X, Y)["loss"] == pytest.approx(float(np.mean((m.predict(X) - Y) ** 2)), rel=1e-10)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_more_than_four_million_rows_through_a_tiny_model(loss):
    n = 4_200_000
    rng = np.random.default_rng(2)
    X = rng.standard_normal((n, 2), dtype=np.float32)
    if loss == "mse":
        y = (X @ np.array([[1.5], [-2.0]], np.float32) + 0.5).astype(np.float32)
        m = lp.Sequential(lp.Linear(2, 1), seed=0)
    else:
        y = (X[:, 0] > X[:, 1]).astype(np.int64)
        m = lp.Sequential(lp.Linear(2, 2), seed=0)
    m.compile(loss=loss, optimizer=lp.SGD(lr=0.1))
    h = m.fit(X, y, epochs=1, batch_size=4096, progress=False)
    assert np.isfinite(h.history["loss"][0])
    ev = m.evaluate(X, y)
    P = m.predict(X)
    assert P.shape[0] == n and np.isfinite(P).all()
    if loss == "mse":
        assert ev["loss"] < 1e-3  # a linear target: learned in one pass
    else:
        assert ev["accuracy"] > 0.98
