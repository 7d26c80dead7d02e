"""The moving target: lp.explain.moving_target on models with normalization layers, its input
drift figures, and the lp.MovingTarget callback in fit."""

import math

import numpy as np
import pytest

import layerprop as lp
from layerprop.explain import _graph_forward, _Twin


def _norm_mlp(norm, dtype="float64", seed=0, act=lp.Tanh):
    """Linear(5, 8) -> [norm(8)] -> act -> Linear(8, 6) -> act -> Linear(6, 3)."""
    layers = [lp.Linear(5, 8)] + ([norm(8)] if norm is not None else [])
    layers += [act(), lp.Linear(8, 6), act(), lp.Linear(6, 3)]
    return lp.Sequential(*layers, dtype=dtype, seed=seed)


def _data(seed=0, n=16, d=5, k=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, k, n)


def _trained(norm, steps=5, dtype="float64"):
    """A compiled model whose BatchNorm running statistics are no longer the defaults."""
    model = _norm_mlp(norm, dtype=dtype)
    model.compile("cross_entropy", lp.SGD(lr=0.1))
    X, y = _data()
    for _ in range(steps):
        model.train_step(X, y)
    return model, X, y


def _state(model):
    return ({k: v.copy() for k, v in model.parameters().items()},
            {k: v.copy() for k, v in model.buffers().items()})


def _assert_same_state(model, state):
    params, buffers = state
    for k, v in model.parameters().items():
        assert np.array_equal(v, params[k]), k
    for k, v in model.buffers().items():
        assert np.array_equal(v, buffers[k]), k


# ------------------------------------------------------------------ explain on norm models


def test_twin_copies_running_statistics():
    model, X, y = _trained(lp.BatchNorm1d)
    assert not np.all(model.buffers()["1.running_var"] == 1.0)  # the statistics moved
    model.eval()
    twin = _Twin(model, X, y)
    for k, v in model.buffers().items():
        assert np.array_equal(twin.model.buffers()[k], v), k
    # Evaluation mode uses the running statistics: the twin's loss is the model's.
    expected, grads = model.loss_and_grads(X, y)
    rep = lp.explain.moving_target(model, X, y)
    assert rep.loss == pytest.approx(expected, rel=1e-13)
    assert rep.loss == pytest.approx(model.evaluate(X, y)["loss"], rel=1e-13)
    assert "batch norm on running statistics" in str(rep)
    assert lp.explain.gradcheck(model, X, y).passed


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("norm", [lp.BatchNorm1d, lp.LayerNorm])
def test_numpy_forward_matches_the_core(norm, training):
    model, X, y = _trained(norm)
    model.train() if training else model.eval()
    twin = _Twin(model, X, y)
    vals, _ = _graph_forward(twin.model, twin.X)
    logits = vals[-1]
    if not training:
        np.testing.assert_allclose(logits, model.predict(X), rtol=1e-12, atol=1e-12)
    z = logits - logits.max(axis=1, keepdims=True)
    ce = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
    assert ce == pytest.approx(twin.loss(), rel=1e-12)


@pytest.mark.parametrize("norm", [lp.BatchNorm1d, lp.LayerNorm])
def test_moving_target_on_norm_models_matches_a_manual_step(norm):
    model, X, y = _trained(norm, dtype="float32")
    state = _state(model)
    lr = 0.3
    rep = lp.explain.moving_target(model, X, y, lr=lr)
    _assert_same_state(model, state)  # parameters and running statistics untouched
    assert rep.layers == ["0", "1", "3", "5"] and rep.lr == lr
    assert rep.mean_drift["0"] == 0.0 and rep.var_drift["0"] == 0.0  # its input is X

    # Oracle for the norm layer "1": a float64 copy, every other layer stepped by -lr * grad,
    # on the data as the float32 model sees it.
    X = X.astype(np.float32).astype(np.float64)
    copy = _norm_mlp(norm)
    copy.compile("cross_entropy", lp.SGD(lr=0.0))
    for k, v in model.parameters().items():
        copy.parameters()[k][...] = v
    _, g0 = copy.loss_and_grads(X, y)
    W0, b0 = copy.parameters()["0.weight"].copy(), copy.parameters()["0.bias"].copy()
    for k in copy.parameters():
        if not k.startswith("1."):
            copy.parameters()[k][...] -= lr * g0[k]
    _, g1 = copy.loss_and_grads(X, y)
    a = np.concatenate([g0["1.weight"], g0["1.bias"]])
    b = np.concatenate([g1["1.weight"], g1["1.bias"]])
    assert rep.cosine["1"] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), rel=1e-12)
    assert rep.norm_ratio["1"] == pytest.approx(np.linalg.norm(b) / np.linalg.norm(a), rel=1e-12)
    assert rep.cosine["1"] < 1 - 1e-6

    # The norm layer's input is Linear 0's output: its drift from the step of layer 0.
    h0 = X @ W0.T + b0
    h1 = X @ copy.parameters()["0.weight"].T + copy.parameters()["0.bias"]
    m0, v0 = h0.mean(axis=0), h0.var(axis=0)
    m1, v1 = h1.mean(axis=0), h1.var(axis=0)
    assert rep.mean_drift["1"] == pytest.approx(np.linalg.norm(m1 - m0) / math.sqrt(v0.sum()), rel=1e-9)
    assert rep.var_drift["1"] == pytest.approx(np.linalg.norm(v1 - v0) / np.linalg.norm(v0), rel=1e-9)
    assert rep.mean_drift["1"] > 0 and rep.var_drift["1"] > 0
    assert "input var drift" in str(rep)


def test_moving_target_lr_defaults_to_the_optimizer_and_is_validated():
    model, X, y = _trained(None)
    assert lp.explain.moving_target(model, X, y).lr == 0.1
    for bad in (0, -1.0, math.nan, math.inf, "fast"):
        with pytest.raises(ValueError, match="lr: expected a positive number"):
            lp.explain.moving_target(model, X, y, lr=bad)


@pytest.mark.parametrize("norm", [lp.BatchNorm1d, lp.LayerNorm])
def test_path_gradients_refuses_norm_layers_clearly(norm):
    model, X, y = _trained(norm)
    with pytest.raises(TypeError, match=r"path_gradients: the model has (BatchNorm1d|LayerNorm)\(8.*"
                                        r"use gradcheck or moving_target"):
        lp.explain.path_gradients(model, X, y, "0.weight", (0, 0))


def test_gradcheck_passes_on_norm_models_in_both_modes():
    for norm in (lp.BatchNorm1d, lp.LayerNorm):
        model, X, y = _trained(norm)
        assert lp.explain.gradcheck(model, X, y).passed
        model.eval()
        assert lp.explain.gradcheck(model, X, y).passed


# ------------------------------------------------------------------ the MovingTarget callback


def test_callback_with_one_layer_records_cosine_one():
    model = lp.Sequential(lp.Linear(5, 3), dtype="float64", seed=0)
    model.compile("cross_entropy", lp.SGD(lr=0.5))
    X, y = _data(n=40)
    cb = lp.MovingTarget(X[:16], y[:16])
    h = model.fit(X, y, epochs=3, batch_size=8, callbacks=[cb], progress=False)
    assert [r["epoch"] for r in cb.history] == [0, 1, 2]
    for r in cb.history:
        assert list(r["cosine"]) == ["0"]
        assert r["cosine"]["0"] == pytest.approx(1.0, abs=1e-14)
        assert r["norm_ratio"]["0"] == pytest.approx(1.0, abs=1e-14)
        assert r["mean_drift"]["0"] == 0.0 and r["var_drift"]["0"] == 0.0
    # The summary figures land in History, one per epoch.
    for key in lp.MovingTarget.KEYS:
        assert len(h.history[key]) == 3, key
    assert h.history["mt_cosine_min"] == pytest.approx([1.0] * 3, abs=1e-14)
    # The probe loss is the model's loss on the probe after that epoch.
    assert cb.history[-1]["loss"] == pytest.approx(model.evaluate(X[:16], y[:16])["loss"], rel=1e-12)


def test_callback_every_and_history_lengths():
    model = _norm_mlp(lp.BatchNorm1d, dtype="float32")
    model.compile("cross_entropy", lp.Adam(lr=0.01))
    X, y = _data(n=64)
    cb = lp.MovingTarget(X[:32], y[:32], every=2, lr=0.1)
    h = model.fit(X, y, epochs=5, batch_size=16, callbacks=[cb], progress=False)
    assert [r["epoch"] for r in cb.history] == [1, 3]
    assert len(h.history["loss"]) == 5
    mins = h.history["mt_cosine_min"]
    assert len(mins) == 5 and all(math.isnan(mins[e]) for e in (0, 2, 4))
    for e, r in zip((1, 3), cb.history):
        assert mins[e] == min(r["cosine"].values())
        assert h.history["mt_cosine_mean"][e] == pytest.approx(np.mean(list(r["cosine"].values())))
        assert h.history["mt_var_drift_max"][e] == max(r["var_drift"].values())
        assert set(r["cosine"]) == {"0", "1", "3", "5"}
        assert all(-1.0 <= c <= 1.0 for c in r["cosine"].values())
    # A second fit starts a fresh record.
    model.fit(X, y, epochs=2, batch_size=16, callbacks=[cb], progress=False)
    assert [r["epoch"] for r in cb.history] == [1]


def test_callback_does_not_change_training():
    X, y = _data(n=48)
    runs = []
    for callbacks in ([], [lp.MovingTarget(X[:16], y[:16])]):
        model = _norm_mlp(lp.BatchNorm1d, dtype="float32")
        model.compile("cross_entropy", lp.Adam(lr=0.01))
        h = model.fit(X, y, epochs=3, batch_size=16, callbacks=callbacks, progress=False)
        runs.append((h.history["loss"], _state(model)))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        for k in a:
            assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batchnorm_reduces_the_input_drift_of_the_next_layer(seed):
    """Linear -> [BatchNorm1d] -> Tanh -> Linear "next" -> Tanh -> Linear: with BatchNorm the
    input of "next" is normalized by the batch, so a step of the layers below moves its mean and
    variance far less. Same Linear weights in both models (BatchNorm draws nothing)."""
    rng = np.random.default_rng(100 + seed)
    X = rng.standard_normal((256, 10)) * rng.uniform(0.5, 3.0, 10) + rng.standard_normal(10)
    y = rng.integers(0, 4, 256)
    drift = {}
    for bn in (False, True):
        layers = [lp.Linear(10, 32)] + ([lp.BatchNorm1d(32)] if bn else [])
        layers += [lp.Tanh(), lp.Linear(32, 32, name="next"), lp.Tanh(), lp.Linear(32, 4)]
        model = lp.Sequential(*layers, dtype="float64", seed=seed)
        model.compile("cross_entropy", lp.SGD(lr=0.05, momentum=0.9))
        cb = lp.MovingTarget(X[:64], y[:64], lr=0.5)
        model.fit(X, y, epochs=2, batch_size=32, callbacks=[cb], progress=False)
        drift[bn] = cb.history[-1]
    for key in ("mean_drift", "var_drift"):
        assert drift[True][key]["next"] < 0.5 * drift[False][key]["next"], (key, drift)


def test_callback_validates_its_arguments():
    X, y = _data()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="every: expected an int >= 1"):
            lp.MovingTarget(X, y, every=bad)
    with pytest.raises(ValueError, match="lr: expected a positive number"):
        lp.MovingTarget(X, y, lr=0.0)
    with pytest.raises(ValueError, match="X_probe: expected a 2-D array"):
        lp.MovingTarget(X[0], y)
    with pytest.raises(ValueError, match="y_probe: expected 16 rows"):
        lp.MovingTarget(X, y[:3])
    assert "MovingTarget" in lp.__all__
