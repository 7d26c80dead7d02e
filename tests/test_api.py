"""The model API: naming, zero-copy views, gradients, the two-half step, fit/evaluate/predict."""

import gc

import numpy as np
import pytest

import layerprop as lp
import reference
from conftest import assert_close, copy_params, make_batch


def small(dtype="float64", seed=0, loss=None, optimizer=None):
    model = lp.Sequential(lp.Linear(4, 5), lp.ReLU(), lp.Linear(5, 3), dtype=dtype, seed=seed)
    if loss is not None:
        model.compile(loss=loss, optimizer=optimizer or lp.SGD(lr=0.1))
    return model


def test_sequential_names_follow_torch_state_dict():
    model = lp.Sequential(
        lp.Linear(4, 5), lp.Tanh(), lp.Linear(5, 6, bias=False), lp.GELU(), lp.Identity(),
        lp.Linear(6, 2), dtype="float32", seed=0,
    )
    params = model.parameters()
    assert list(params) == ["0.weight", "0.bias", "2.weight", "5.weight", "5.bias"]
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {"0.weight": (5, 4), "0.bias": (5,), "2.weight": (6, 5), "5.weight": (2, 6), "5.bias": (2,)}
    assert all(v.dtype == np.float32 for v in params.values())


def test_default_dtype_is_float32():
    assert all(v.dtype == np.float32 for v in lp.Sequential(lp.Linear(3, 2)).parameters().values())


def test_parameter_views_are_zero_copy_and_writable(rng):
    model = small()
    p = model.parameters()
    assert all(v.flags.writeable for v in p.values())
    for name, v in model.parameters().items():
        assert np.shares_memory(v, p[name]), f"{name}: parameters() returned a copy"
    p["0.weight"][...] = 0.0
    p["0.bias"][...] = 0.0
    p["2.bias"][...] = [1.0, -2.0, 3.5]
    X = rng.standard_normal((6, 4))
    # hidden layer is relu(0) = 0, so the output is exactly the last bias
    assert np.array_equal(model.predict(X), np.tile([1.0, -2.0, 3.5], (6, 1)))


def test_parameter_views_see_training_and_keep_model_alive(rng):
    model = small(loss="mse")
    w = model.parameters()["2.weight"]
    for batch in (8, 64, 3):  # growing and shrinking batches must not move the parameters
        before = w.copy()
        model.train_step(*make_batch(rng, batch, 4, 3, "mse"))
        assert not np.array_equal(w, before), f"view did not see the update (batch {batch})"
        assert np.array_equal(w, model.parameters()["2.weight"])
    after = w.copy()
    del model
    gc.collect()
    assert np.array_equal(w, after)  # still valid memory
    w[...] = 1.0
    assert np.all(w == 1.0)


def test_gradients_views_reflect_last_compute_gradients(rng):
    model = small(loss="cross_entropy")
    X1, y1 = make_batch(rng, 8, 4, 3, "cross_entropy")
    X2, y2 = make_batch(rng, 8, 4, 3, "cross_entropy")
    loss1 = model.compute_gradients(X1, y1)
    g = model.gradients()
    assert list(g) == list(model.parameters())
    want_loss1, want1 = model.loss_and_grads(X1, y1)
    assert loss1 == pytest.approx(want_loss1, rel=1e-12)
    for name in g:
        assert_close(g[name], want1[name], 1e-12, name)
    model.compute_gradients(X2, y2)
    _, want2 = model.loss_and_grads(X2, y2)
    for name in g:  # the old views now show the new gradients
        assert_close(g[name], want2[name], 1e-12, name)
        assert not np.allclose(want1[name], want2[name])


def test_loss_and_grads_returns_copies_and_does_not_update(rng):
    model = small(loss="mse")
    X, y = make_batch(rng, 8, 4, 3, "mse")
    before = copy_params(model)
    loss, grads = model.loss_and_grads(X, y)
    grads["0.weight"][...] = 123.0
    loss2, grads2 = model.loss_and_grads(X, y)
    assert loss == loss2
    assert not np.any(grads2["0.weight"] == 123.0)
    for name, p in model.parameters().items():
        assert np.array_equal(p, before[name])


@pytest.mark.parametrize("optimizer", [lambda: lp.SGD(lr=0.1, momentum=0.9), lambda: lp.Adam(lr=0.01)])
def test_compute_plus_apply_gradients_equals_train_step(optimizer, rng):
    a = small(seed=3, loss="cross_entropy", optimizer=optimizer())
    b = small(seed=3, loss="cross_entropy", optimizer=optimizer())
    for _ in range(3):
        X, y = make_batch(rng, 8, 4, 3, "cross_entropy")
        assert a.train_step(X, y) == pytest.approx(b.compute_gradients(X, y), rel=1e-12)
        b.apply_gradients()
        for name, p in a.parameters().items():
            assert_close(b.parameters()[name], p, 1e-12, name)


def test_train_step_returns_loss_before_update(rng):
    model = small(loss="mse")
    X, y = make_batch(rng, 8, 4, 3, "mse")
    before, _ = model.loss_and_grads(X, y)
    assert model.train_step(X, y) == pytest.approx(before, rel=1e-12)
    assert model.loss_and_grads(X, y)[0] < before


def test_fit_history_with_validation(rng):
    model = small(loss="cross_entropy", optimizer=lp.Adam(lr=0.01))
    X, y = make_batch(rng, 40, 4, 3, "cross_entropy")
    Xv, yv = make_batch(rng, 15, 4, 3, "cross_entropy")
    history = model.fit(X, y, epochs=3, batch_size=8, validation_data=(Xv, yv), progress=False)
    h = history.history
    assert {"loss", "val_loss", "val_accuracy"} <= set(h)
    assert all(len(h[k]) == 3 for k in ("loss", "val_loss", "val_accuracy"))
    assert all(np.isfinite(v) for v in h["loss"])
    final = model.evaluate(Xv, yv)  # validation is measured after each epoch's last step
    assert h["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-9)
    assert h["val_accuracy"][-1] == pytest.approx(final["accuracy"], rel=1e-9)


def test_fit_history_without_validation(rng):
    model = small(loss="mse")
    X, y = make_batch(rng, 20, 4, 3, "mse")
    h = model.fit(X, y, epochs=2, batch_size=32, progress=False).history
    assert len(h["loss"]) == 2
    assert "val_loss" not in h and "val_accuracy" not in h
    assert h["loss"][1] < h["loss"][0]  # one full-batch step per epoch: loss must go down


def test_evaluate_classification(rng):
    model = small(loss="cross_entropy")
    X, y = make_batch(rng, 30, 4, 3, "cross_entropy")
    result = model.evaluate(X, y)
    assert set(result) == {"loss", "accuracy"}
    assert result["loss"] == pytest.approx(model.loss_and_grads(X, y)[0], rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(model.predict(X).argmax(axis=1) == y), abs=1e-12)


def test_evaluate_regression(rng):
    model = small(loss="mse")
    X, y = make_batch(rng, 30, 4, 3, "mse")
    result = model.evaluate(X, y)
    assert set(result) == {"loss"}
    assert result["loss"] == pytest.approx(np.mean((model.predict(X) - y) ** 2), rel=1e-12)


@pytest.mark.parametrize("batch_size", [1, 7, 30, 100])
def test_predict_batch_size_equals_predict(batch_size, rng):
    model = small()
    X = rng.standard_normal((30, 4))
    full = model.predict(X)
    assert full.shape == (30, 3)
    assert_close(model.predict(X, batch_size=batch_size), full, 1e-12, "predict")


def test_summary_mentions_layers_and_total():
    model = small()
    text = model.summary()
    assert isinstance(text, str)
    for word in ("Linear", "ReLU"):
        assert word in text
    total = sum(v.size for v in model.parameters().values())
    assert total == 4 * 5 + 5 + 5 * 3 + 3
    assert str(total) in text


def test_train_eval_modes_and_dropout_in_eval(rng):
    model = lp.Sequential(lp.Linear(4, 5), lp.Dropout(p=0.5), lp.Linear(5, 3), dtype="float64", seed=0)
    assert list(model.parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    model.train()
    model.eval()
    X = rng.standard_normal((6, 4))
    p = copy_params(model)
    ref = reference.MLP([(p["0.weight"], p["0.bias"], None), (p["2.weight"], p["2.bias"], None)])
    assert_close(model.predict(X), ref.forward(X), 1e-12, "eval-mode dropout is the identity")
    assert np.array_equal(model.predict(X), model.predict(X))
