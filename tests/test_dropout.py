"""Dropout: masks drawn in training mode only, the same mask forward and backward,
inverted scaling, reproducible from the seed and independent of the thread count."""

import numpy as np
import pytest

import layerprop as lp


def _identity_model(d, p, seed=0, dtype="float64"):
    m = lp.Sequential(lp.Linear(d, d), lp.Dropout(p=p), dtype=dtype, seed=seed)
    params = m.parameters()
    params["0.weight"][...] = np.eye(d)
    params["0.bias"][...] = 0.0
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.0))
    return m


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics_and_scaling(p):
    d, n = 64, 512
    m = _identity_model(d, p)
    X = np.ones((n, d))
    loss, grads = m.loss_and_grads(X, np.zeros((n, d)))
    # y = m with m in {0, 1/(1-p)}: mean(y^2) = kept_fraction / (1-p)^2
    kept = loss * (1 - p) ** 2
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / (n * d))
    # Backward uses the forward's mask: sum_j dL/db_j = 2/(N D) sum m^2 = 2 * loss.
    assert grads["0.bias"].sum() == pytest.approx(2 * loss, rel=1e-12)


def test_eval_mode_is_identity_and_predict_never_drops():
    d = 16
    m = _identity_model(d, 0.5)
    X = np.ones((32, d))
    m.eval()
    loss, _ = m.loss_and_grads(X, np.zeros((32, d)))
    assert loss == pytest.approx(1.0, rel=1e-15)
    m.train()
    assert np.array_equal(m.predict(X), X)
    assert m.evaluate(X, np.zeros((32, d)))["loss"] == pytest.approx(1.0, rel=1e-15)


def test_masks_change_between_steps_and_repeat_with_seed():
    d = 32
    X = np.ones((64, d))
    Y = np.zeros((64, d))
    a, b = _identity_model(d, 0.5, seed=3), _identity_model(d, 0.5, seed=3)
    la = [a.loss_and_grads(X, Y)[0] for _ in range(3)]
    lb = [b.loss_and_grads(X, Y)[0] for _ in range(3)]
    assert la == lb
    assert len(set(la)) == 3
    c = _identity_model(d, 0.5, seed=4)
    assert c.loss_and_grads(X, Y)[0] != la[0]


def test_dropout_independent_of_thread_count():
    old = lp.get_num_threads()
    try:
        out = []
        for nt in (1, 2):
            lp.set_num_threads(nt)
            m = lp.Sequential(lp.Linear(300, 400), lp.ReLU(), lp.Dropout(0.3), lp.Linear(400, 10), seed=1)
            m.compile(loss="cross_entropy", optimizer=lp.Adam())
            X = np.random.default_rng(0).standard_normal((256, 300)).astype(np.float32)
            y = np.arange(256) % 10
            losses = [m.train_step(X, y) for _ in range(3)]
            out.append((losses, [v.copy() for v in m.parameters().values()]))
        assert out[0][0] == out[1][0]
        assert all(np.array_equal(u, v) for u, v in zip(out[0][1], out[1][1]))
    finally:
        lp.set_num_threads(old)


def test_bad_p_refused():
    for p in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="p"):
            lp.Dropout(p)
