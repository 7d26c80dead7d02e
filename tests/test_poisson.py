"""loss="poisson": PyTorch's PoissonNLLLoss(log_input=True) (mean over elements of
exp(z) - y z), its gradient, weights, LocoProp's exp link, and the refusal of negative targets."""
from __future__ import annotations

import numpy as np
import pytest

import layerprop as lp


def data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = rng.poisson(np.exp(X[:, :2] * 0.5)).astype(np.float64)
    return X, y


def test_poisson_matches_pytorch():
    torch = pytest.importorskip("torch")
    X, y = data()
    w = np.random.default_rng(1).random(len(X))
    m = lp.Sequential(lp.Linear(4, 6), lp.Tanh(), lp.Linear(6, 2), dtype="float64", seed=0)
    m.compile(loss="poisson", optimizer=lp.Adam(lr=1e-2))
    t = m.to_torch().double()
    opt = torch.optim.Adam(t.parameters(), lr=1e-2)
    Xt, yt, wt = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(w)
    for k in range(4):
        sw = w if k % 2 else None
        ours = m.train_step(X, y, sample_weight=sw)
        opt.zero_grad()
        per = torch.nn.functional.poisson_nll_loss(t(Xt), yt, log_input=True, full=False, reduction="none")
        ref = per.mean() if sw is None else (wt * per.mean(dim=1)).sum() / wt.sum()
        ref.backward()
        opt.step()
        assert ours == pytest.approx(float(ref.detach()), rel=1e-12)
    for a, b in zip(m.parameters().values(), t.parameters()):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_poisson_gradcheck_and_locoprop():
    X, y = data(n=12)
    m = lp.Sequential(lp.Linear(4, 5), lp.Tanh(), lp.Linear(5, 2), dtype="float64", seed=0)
    m.compile(loss="poisson")
    assert lp.explain.gradcheck(m, X, y).passed
    for variant in ("S", "M"):
        lm = lp.Sequential(lp.Linear(4, 5), lp.Tanh(), lp.Linear(5, 2), dtype="float64", seed=0)
        lm.compile(loss="poisson", optimizer=lp.SGD(lr=0.05), schedule=lp.LocoProp(variant=variant, inner_steps=3))
        first = lm.evaluate(X, y)["loss"]
        for _ in range(20):
            lm.train_step(X, y)
        assert lm.evaluate(X, y)["loss"] < first


def test_negative_poisson_targets_are_refused():
    X, y = data()
    y[3, 1] = -1
    m = lp.Sequential(lp.Linear(4, 2), dtype="float64", seed=0).compile(loss="poisson")
    before = m.parameters()["0.weight"].copy()
    with pytest.raises(ValueError, match=r"y: poisson targets must be >= 0, got -1.* at row 3"):
        m.train_step(X, y)
    with pytest.raises(ValueError, match="y: poisson targets must be >= 0"):
        m.fit(X, y, progress=False)
    assert np.array_equal(before, m.parameters()["0.weight"])
