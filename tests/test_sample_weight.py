"""sample_weight: every loss is the weighted mean sum(w_i l_i) / sum(w_i), and so is its
gradient (PyTorch: (w * loss(reduction="none")).sum() / w.sum()), through train_step,
loss_and_grads, evaluate and fit; weights are checked where the core reads them."""
from __future__ import annotations

import numpy as np
import pytest

import layerprop as lp


def model(loss, dtype="float64", out=3):
    m = lp.Sequential(lp.Linear(5, 8), lp.Tanh(), lp.Linear(8, out), dtype=dtype, seed=0)
    return m.compile(loss=loss, optimizer=lp.SGD(lr=0.1, momentum=0.5))


def data(loss, n=24, out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    if loss == "cross_entropy":
        y = rng.integers(0, out, n)
    elif loss == "mse":
        y = rng.standard_normal((n, out))
    else:
        y = rng.random((n, out))
    return X, y, rng.random(n) * 3


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
def test_weighted_loss_and_gradients_match_pytorch(loss):
    torch = pytest.importorskip("torch")
    X, y, w = data(loss)
    m = model(loss)
    t = m.to_torch().double()
    opt = torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.5)
    fn = {"cross_entropy": torch.nn.functional.cross_entropy, "mse": torch.nn.functional.mse_loss,
          "bce_with_logits": torch.nn.functional.binary_cross_entropy_with_logits}[loss]
    Xt, yt, wt = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(w)
    for _ in range(3):
        ours = m.train_step(X, y, sample_weight=w)
        opt.zero_grad()
        per = fn(t(Xt), yt, reduction="none")
        per = per if per.ndim == 1 else per.mean(dim=1)  # mse / bce: mean over the outputs
        ref = (wt * per).sum() / wt.sum()
        ref.backward()
        opt.step()
        assert ours == pytest.approx(float(ref.detach()), rel=1e-12)
    for a, b in zip(m.parameters().values(), t.parameters()):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_integer_weights_equal_repeated_rows(loss):
    X, y, _ = data(loss, n=10)
    k = np.array([1, 2, 0, 3, 1, 1, 2, 1, 4, 1])
    a, b = model(loss), model(loss)
    la, ga = a.loss_and_grads(X, y, sample_weight=k)
    lb, gb = b.loss_and_grads(np.repeat(X, k, axis=0), np.repeat(y, k, axis=0))
    assert la == pytest.approx(lb, rel=1e-12)
    for name in ga:
        np.testing.assert_allclose(ga[name], gb[name], rtol=1e-10, atol=1e-14)
    ea = a.evaluate(X, y, sample_weight=k, batch_size=3)
    eb = b.evaluate(np.repeat(X, k, axis=0), np.repeat(y, k, axis=0))
    assert ea["loss"] == pytest.approx(eb["loss"], rel=1e-12)
    if loss == "cross_entropy":
        assert ea["accuracy"] == pytest.approx(eb["accuracy"], rel=1e-12)


def test_fit_with_weights_equals_weighted_steps():
    X, y, w = data("cross_entropy", n=40)
    a, b = model("cross_entropy"), model("cross_entropy")
    h = a.fit(X, y, epochs=2, batch_size=16, shuffle=False, sample_weight=w, progress=False)
    for _ in range(2):
        for s in range(0, 40, 16):
            b.train_step(X[s:s + 16], y[s:s + 16], sample_weight=w[s:s + 16])
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k])
    assert np.isfinite(h.history["loss"]).all()
    ones = model("cross_entropy").fit(X, y, epochs=1, shuffle=False, sample_weight=np.ones(40), progress=False)
    plain = model("cross_entropy").fit(X, y, epochs=1, shuffle=False, progress=False)
    assert ones.history["loss"] == pytest.approx(plain.history["loss"], rel=1e-12)


@pytest.mark.parametrize("bad,match", [
    (np.r_[-1.0, np.ones(23)], "sample_weight: expected finite weights >= 0, got -1"),
    (np.r_[np.nan, np.ones(23)], "sample_weight: expected finite weights >= 0"),
    (np.ones(5), r"sample_weight: expected shape \(24,\)"),
    (np.zeros(24), "sample_weight: .*(positive|weight 0)"),
    (np.ones(24, dtype=complex), "sample_weight: expected real numbers"),
])
def test_bad_weights_are_refused_and_change_nothing(bad, match):
    X, y, _ = data("cross_entropy")
    m = model("cross_entropy")
    m.train_step(X, y)
    before = {k: v.copy() for k, v in m.parameters().items()}
    steps = m._core.steps()
    for call in (lambda: m.train_step(X, y, sample_weight=bad),
                 lambda: m.fit(X, y, epochs=1, sample_weight=bad, progress=False)):
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    for k, v in m.parameters().items():
        assert np.array_equal(v, before[k])
    assert m._core.steps() == steps


def test_a_batch_whose_weights_are_all_zero_is_refused_before_fit_starts():
    X, y, _ = data("cross_entropy", n=32)
    w = np.ones(32)
    w[16:] = 0  # the second batch of 16, without shuffling
    m = model("cross_entropy")
    with pytest.raises(ValueError, match="sample_weight: the rows of batch 1 all have weight 0"):
        m.fit(X, y, batch_size=16, shuffle=False, sample_weight=w, progress=False)
    assert set(m._core.steps()) == {0}
