"""Every refusal at the boundary: right exception, the argument named, the model untouched."""

import numpy as np
import pytest

import layerprop as lp
from conftest import copy_params, make_batch

N, N_IN, N_OUT = 8, 4, 3

CALLS = {  # every call that takes (X, y)
    "train_step": lambda m, X, y: m.train_step(X, y),
    "compute_gradients": lambda m, X, y: m.compute_gradients(X, y),
    "loss_and_grads": lambda m, X, y: m.loss_and_grads(X, y),
    "evaluate": lambda m, X, y: m.evaluate(X, y),
    "fit": lambda m, X, y: m.fit(X, y, epochs=1, batch_size=3, progress=False),
}
CALLS_X = {**CALLS, "predict": lambda m, X, y: m.predict(X)}


def new_model(loss, dtype="float64"):
    model = lp.Sequential(lp.Linear(N_IN, 6), lp.ReLU(), lp.Linear(6, N_OUT), dtype=dtype, seed=0)
    model.compile(loss=loss, optimizer=lp.Adam(lr=0.01))
    return model


def assert_refused(call, X, y, exc, arg, loss="cross_entropy"):
    """`call` on (X, y) raises `exc` naming `arg`; afterwards the model is exactly a twin that
    never saw the bad call: same parameters, and the next valid steps agree bitwise."""
    rng = np.random.default_rng(0)
    model, twin = new_model(loss), new_model(loss)
    X0, y0 = make_batch(rng, N, N_IN, N_OUT, loss)
    model.train_step(X0, y0)  # give the optimizer some state to corrupt
    twin.train_step(X0, y0)
    before = copy_params(model)

    with pytest.raises(exc, match=rf"(?<![A-Za-z_]){arg}(?![A-Za-z_])"):
        call(model, X, y)

    for name, p in model.parameters().items():
        assert np.array_equal(p, before[name]), f"{name} changed by a refused call"
    X1, y1 = make_batch(rng, N, N_IN, N_OUT, loss)
    assert model.train_step(X1, y1) == twin.train_step(X1, y1)
    for name, p in model.parameters().items():
        assert np.array_equal(p, twin.parameters()[name]), f"{name} differs from the twin"


def _with(X, index, value):
    X = X.copy()
    X[index] = value
    return X


BAD_X = {  # id -> (make bad X from a good float64 X, exception)
    "int64": (lambda X: X.astype(np.int64), TypeError),
    "int32": (lambda X: X.astype(np.int32), TypeError),
    "complex": (lambda X: X.astype(np.complex128), TypeError),
    "float32_to_float64_model": (lambda X: X.astype(np.float32), TypeError),
    "1d": (lambda X: X.ravel(), ValueError),
    "3d": (lambda X: X.reshape(N, 2, N_IN // 2), ValueError),
    "too_few_features": (lambda X: X[:, :-1].copy(), ValueError),
    "too_many_features": (lambda X: np.hstack([X, X[:, :1]]), ValueError),
    "nan": (lambda X: _with(X, (2, 1), np.nan), ValueError),
    "inf": (lambda X: _with(X, (0, 0), np.inf), ValueError),
    "neg_inf": (lambda X: _with(X, (N - 1, N_IN - 1), -np.inf), ValueError),
}


@pytest.mark.parametrize("bad", list(BAD_X))
@pytest.mark.parametrize("call", list(CALLS_X))
def test_bad_X_refused(call, bad):
    X, y = make_batch(np.random.default_rng(1), N, N_IN, N_OUT, "cross_entropy")
    make_bad, exc = BAD_X[bad]
    assert_refused(CALLS_X[call], make_bad(X), y, exc, "X")


@pytest.mark.parametrize("call", list(CALLS))
def test_empty_batch_refused(call):
    X, y = make_batch(np.random.default_rng(1), N, N_IN, N_OUT, "cross_entropy")
    assert_refused(CALLS[call], X[:0], y[:0], ValueError, "X")


BAD_Y = {  # id -> (loss, make bad y from a good y, exception)
    "ce_label_too_large": ("cross_entropy", lambda y: _with(y, 3, N_OUT), ValueError),
    "ce_label_negative": ("cross_entropy", lambda y: _with(y, 0, -1), ValueError),
    "ce_float_labels": ("cross_entropy", lambda y: y.astype(np.float64), TypeError),
    "ce_too_short": ("cross_entropy", lambda y: y[:-1].copy(), ValueError),
    "ce_too_long": ("cross_entropy", lambda y: np.concatenate([y, y[:1]]), ValueError),
    "mse_too_short": ("mse", lambda y: y[:-1].copy(), ValueError),
    "mse_wrong_width": ("mse", lambda y: np.hstack([y, y[:, :1]]), ValueError),
    "mse_1d": ("mse", lambda y: y[:, 0].copy(), ValueError),
    "mse_nan": ("mse", lambda y: _with(y, (1, 2), np.nan), ValueError),
    "mse_inf": ("mse", lambda y: _with(y, (4, 0), np.inf), ValueError),
    "bce_nan": ("bce_with_logits", lambda y: _with(y, (0, 1), np.nan), ValueError),
    "bce_too_long": ("bce_with_logits", lambda y: np.vstack([y, y[:1]]), ValueError),
}


@pytest.mark.parametrize("bad", list(BAD_Y))
@pytest.mark.parametrize("call", list(CALLS))
def test_bad_y_refused(call, bad):
    loss, make_bad, exc = BAD_Y[bad]
    X, y = make_batch(np.random.default_rng(1), N, N_IN, N_OUT, loss)
    assert_refused(CALLS[call], X, make_bad(y), exc, "y", loss=loss)


@pytest.mark.parametrize("call", list(CALLS))
def test_calls_needing_a_loss_refused_before_compile(call):
    model = lp.Sequential(lp.Linear(N_IN, N_OUT), dtype="float64", seed=0)
    before = copy_params(model)
    X, y = make_batch(np.random.default_rng(1), N, N_IN, N_OUT, "cross_entropy")
    with pytest.raises(RuntimeError, match="compile"):
        CALLS[call](model, X, y)
    for name, p in model.parameters().items():
        assert np.array_equal(p, before[name])
    assert model.predict(X).shape == (N, N_OUT)  # needs no loss: fine before compile
    model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.1))
    assert np.isfinite(model.train_step(X, y))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_float64_data_to_float32_model_is_converted(loss):
    X, y = make_batch(np.random.default_rng(2), N, N_IN, N_OUT, loss, dtype="float64")
    X_keep, y_keep = X.copy(), y.copy()
    y32 = y if loss == "cross_entropy" else y.astype(np.float32)
    a, b = new_model(loss, "float32"), new_model(loss, "float32")

    assert np.array_equal(a.predict(X), b.predict(X.astype(np.float32)))
    assert a.predict(X).dtype == np.float32
    la, ga = a.loss_and_grads(X, y)
    lb, gb = b.loss_and_grads(X.astype(np.float32), y32)
    assert la == lb
    for name in ga:
        assert np.array_equal(ga[name], gb[name])
    for _ in range(2):
        assert a.train_step(X, y) == b.train_step(X.astype(np.float32), y32)
    for name, p in a.parameters().items():
        assert p.dtype == np.float32
        assert np.array_equal(p, b.parameters()[name])
    # the caller's arrays are read, never written
    assert np.array_equal(X, X_keep) and np.array_equal(y, y_keep)


def test_non_contiguous_X_is_refused_or_exact():
    X, y = make_batch(np.random.default_rng(3), N, N_IN, N_OUT, "cross_entropy")
    for weird in (np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2]):
        assert not weird.flags.c_contiguous and np.array_equal(weird, X)
        a, b = new_model("cross_entropy"), new_model("cross_entropy")
        try:
            got = a.train_step(weird, y)
        except (TypeError, ValueError) as e:
            assert "X" in str(e)
            continue
        assert got == b.train_step(X, y)
        for name, p in a.parameters().items():
            assert np.array_equal(p, b.parameters()[name])


@pytest.mark.parametrize(
    "make",
    [
        lambda: lp.Linear(0, 3),
        lambda: lp.Linear(3, 0),
        lambda: lp.Linear(-2, 3),
        lambda: lp.SGD(lr=-0.1),
        lambda: lp.Adam(lr=-1e-3),
        lambda: lp.AdamW(lr=-1e-3),
        lambda: lp.Sequential(lp.Linear(2, 2), dtype="float16"),
        lambda: lp.Sequential(lp.Linear(2, 2), dtype="int32"),
        lambda: lp.Sequential(lp.Linear(2, 2), dtype="nonsense"),
        lambda: lp.Sequential(lp.Linear(2, 2)).compile(loss="hinge", optimizer=lp.SGD(lr=0.1)),
    ],
    ids=[
        "Linear-in0",
        "Linear-out0",
        "Linear-negative",
        "SGD-negative-lr",
        "Adam-negative-lr",
        "AdamW-negative-lr",
        "dtype-float16",
        "dtype-int32",
        "dtype-nonsense",
        "unknown-loss",
    ],
)
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()
