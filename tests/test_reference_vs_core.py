"""The core against the float64 NumPy twins in reference.py, to 1e-10 relative."""

import numpy as np
import pytest

import reference
from conftest import (
    ACTIVATIONS,
    LOSSES,
    OPTIMIZERS,
    assert_close,
    build_mlp,
    copy_params,
    lp_optimizer,
    make_batch,
)

TOL = 1e-10
N_IN, N_HIDDEN, N_OUT, BATCH = 5, 7, 4, 9

# "hidden": Linear, act, Linear.  "output": Linear, act (the activation feeds the loss).
STRUCTURES = {"hidden": ([N_IN, N_HIDDEN, N_OUT], False), "output": ([N_IN, N_OUT], True)}


def _pair(act, structure, seed=0):
    sizes, final_act = STRUCTURES[structure]
    model, acts = build_mlp(sizes, act, dtype="float64", seed=seed, final_act=final_act)
    return model, reference.MLP.from_params(copy_params(model), acts)


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_loss_and_grads_match_reference(act, loss, structure, rng):
    model, ref = _pair(act, structure)
    model.compile(loss=loss, optimizer=lp_optimizer("sgd"))
    X, y = make_batch(rng, BATCH, N_IN, N_OUT, loss)

    value, grads = model.loss_and_grads(X, y)
    want_value, want_grads = ref.loss_and_grads(X, y, loss)

    assert isinstance(value, float)
    assert abs(value - want_value) <= TOL * abs(want_value)
    assert list(grads) == list(model.parameters()) == list(want_grads)
    for name, g in grads.items():
        assert g.dtype == np.float64
        assert_close(g, want_grads[name], TOL, name)


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_predict_matches_reference_forward(act, structure, rng):
    model, ref = _pair(act, structure, seed=1)
    X = rng.standard_normal((BATCH, N_IN))
    out = model.predict(X)
    assert out.shape == (BATCH, N_OUT) and out.dtype == np.float64
    assert_close(out, ref.forward(X), TOL, "predict")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_train_steps_match_reference_optimizer(opt, loss, rng):
    model, acts = build_mlp([N_IN, N_HIDDEN, 6, N_OUT], "tanh", dtype="float64", seed=2)
    ref = reference.MLP.from_params(copy_params(model), acts)
    cls, kw = OPTIMIZERS[opt]
    ref_opt = getattr(reference, cls)(**kw)
    model.compile(loss=loss, optimizer=lp_optimizer(opt))

    for step in range(4):
        X, y = make_batch(rng, BATCH, N_IN, N_OUT, loss)
        got = model.train_step(X, y)
        want = ref.train_step(X, y, loss, ref_opt)
        assert isinstance(got, float)
        assert abs(got - want) <= TOL * abs(want), f"step {step}"
        want_params = ref.params()
        for name, p in model.parameters().items():
            assert_close(p, want_params[name], TOL, f"step {step} {name}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_with_logits_far_apart(dtype):
    # Logits 100 to 500 apart: the exponentials of the losing classes round to 0 (exp_nonpos
    # returns 0 there). Loss and gradient still match the float64 twin, and nothing is NaN.
    import layerprop as lp
    model = lp.Sequential(lp.Linear(2, 3), seed=0, dtype=dtype)
    model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.0))
    W = np.array([[150.0, 0.5], [0.0, 0.0], [-100.0, -0.5]])
    model.parameters()["0.weight"][:] = W
    model.parameters()["0.bias"][:] = 0
    X = np.array([[2.0, 1.0], [1.0, -1.0], [-1.0, 0.0], [0.7, 0.3]], dtype=dtype)
    y = np.array([0, 1, 2, 0])
    loss, grads = model.loss_and_grads(X, y)
    z = X.astype(np.float64) @ W.T
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    lse = m[:, 0] + np.log(e.sum(axis=1))
    ref_loss = np.mean(lse - z[np.arange(4), y])
    dz = e / e.sum(axis=1, keepdims=True)
    dz[np.arange(4), y] -= 1
    dz /= 4
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert np.isfinite(loss) and abs(loss - ref_loss) <= tol * abs(ref_loss)
    g = grads["0.weight"]
    assert np.all(np.isfinite(g))
    assert np.allclose(g, dz.T @ X.astype(np.float64), rtol=tol, atol=tol * np.abs(dz.T @ X).max())


def test_float32_softmax_exponentials_are_within_an_ulp_or_two():
    """The float cross-entropy's own exponential (exp_nonpos_f32 in loss.cpp, at most 0.98 ulp)
    over the whole range it serves: logits 0 to 104 below the row's maximum, with subnormal and
    zero results. A 2-class row's gradient for the losing class is softmax / N = e / (1 + e) / N
    with e = exp(d); checked against float64 to a few float ulps (e, the sum, the division)."""
    import layerprop as lp
    rng = np.random.default_rng(5)
    d = np.concatenate([-rng.uniform(0, 104, 4000), -np.linspace(0, 30, 1000), [0.0, -1e-8, -87.0, -88.5, -103.9]])
    d = d.astype(np.float32)
    N = d.size
    model = lp.Sequential(lp.Linear(1, 2, bias=True), seed=0, dtype="float32")
    model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.0))
    model.parameters()["0.weight"][:] = [[0.0], [1.0]]   # logits (0, x): class 1 loses by -x
    model.parameters()["0.bias"][:] = 0
    X = d[:, None]
    y = np.zeros(N, dtype=np.int64)
    _, grads = model.loss_and_grads(X, y)
    # db for class 1 is the sum over rows of softmax_1 / N; check rows one at a time instead.
    got = np.array([model.loss_and_grads(X[i:i + 1], y[i:i + 1])[1]["0.bias"][1] for i in range(0, N, 7)])
    e = np.exp(d[::7].astype(np.float64))
    want = e / (1.0 + e)
    normal = want > 1e-37
    assert np.all(np.abs(got[normal] - want[normal]) <= 4 * 2.0 ** -24 * want[normal])
    assert np.all(np.abs(got[~normal] - want[~normal]) <= 2.0 ** -148)
    assert np.all(got >= 0) and np.isfinite(grads["0.bias"]).all()
