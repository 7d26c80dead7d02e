"""One rule for every argument check (layerprop.validation): an int is numbers.Integral and
not bool (np.int64 accepted, True refused) at every public entry point; reals are finite
numbers, not bools; every refusal names its argument."""
import math
from fractions import Fraction

import numpy as np
import pytest

import layerprop as lp
from layerprop import validation as V


# ------------------------------------------------------------------ the rules themselves
@pytest.mark.parametrize("v", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_is_int_accepts_integrals(v):
    assert V.is_int(v)
    assert V.positive_int(v, "n") == 3 and type(V.positive_int(v, "n")) is int


@pytest.mark.parametrize("v", [True, False, np.bool_(True), 3.0, np.float64(3.0), "3", None, [3]])
def test_is_int_refuses_everything_else(v):
    assert not V.is_int(v)
    with pytest.raises(ValueError, match=r"^n: expected a positive int, got "):
        V.positive_int(v, "n")


def test_integer_bounds_and_messages():
    assert V.integer(0, "k", 0) == 0
    with pytest.raises(ValueError, match=r"^k: expected an int >= 1, got 0$"):
        V.integer(0, "k", 1)
    with pytest.raises(ValueError, match=r"^k: expected an int in \[0, 9\], got 10$"):
        V.integer(10, "k", 0, 9)
    with pytest.raises(ValueError, match=r"^k: expected an int <= 2, got 3$"):
        V.integer(3, "k", hi=2)


@pytest.mark.parametrize("v", [0.5, 1, np.float32(0.5), np.int64(1), Fraction(1, 2)])
def test_real_accepts_real_numbers(v):
    assert V.real(v, "x") == float(v)


@pytest.mark.parametrize("v", [True, "0.5", None, 1j, math.nan, math.inf, -math.inf, np.float64("nan")])
def test_real_refuses_bools_strings_and_non_finite(v):
    with pytest.raises(ValueError, match=r"^x: expected a finite number, got "):
        V.real(v, "x")


def test_real_ranges():
    assert V.real(math.inf, "x", 0.0, finite=False) == math.inf
    with pytest.raises(ValueError, match=r"^x: expected a number in \(0\.0, 1\.0\), got 1\.0$"):
        V.real(1.0, "x", 0.0, 1.0, lo_open=True, hi_open=True)
    with pytest.raises(ValueError, match=r"^x: expected a positive number, got 0"):
        V.positive_float(0, "x")
    assert V.nonneg_float(0, "x") == 0.0
    with pytest.raises(ValueError, match=r"^x: expected a finite number >= 0, got -1"):
        V.nonneg_float(-1, "x")
    assert V.probability(np.float32(1.0), "p") == 1.0
    with pytest.raises(ValueError, match=r"^p: expected a probability in \[0, 1\], got 1\.5$"):
        V.probability(1.5, "p")


def test_choice():
    assert V.choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^mode: expected 'a' or 'b', got 'c'$"):
        V.choice("c", "mode", ("a", "b"))
    with pytest.raises(ValueError, match=r"^mode: expected 'a', 'b' or 'c', got 1$"):
        V.choice(1, "mode", ("a", "b", "c"))


def test_text_arg_for_the_command_line():
    import argparse
    parse = V.text_arg(V.positive_int, "a positive int", int)
    assert parse("7") == 7
    for bad in ("0", "-3", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"^expected a positive int, got '{bad}'$"):
            parse(bad)
    frac = V.text_arg(lambda v, n: V.real(v, n, 0.0, 1.0, hi_open=True), "a fraction in [0, 1)")
    assert frac("0.25") == 0.25
    for bad in ("1", "nan", "inf", "-0.1"):
        with pytest.raises(argparse.ArgumentTypeError):
            frac(bad)


# ------------------------------------------------------------------ the two examples
def test_linear_accepts_numpy_ints():
    layer = lp.Linear(np.int64(3), np.int32(4))
    assert (layer.in_features, layer.out_features) == (3, 4)
    assert type(layer.in_features) is int and type(layer.out_features) is int
    model = lp.Sequential(layer, lp.ReLU(), lp.Linear(4, np.int64(2)), seed=np.int64(0))
    assert model.predict(np.ones((2, 3))).shape == (2, 2)


def _compiled(loss="mse"):
    model = lp.Sequential(lp.Linear(3, 4), lp.ReLU(), lp.Linear(4, 2), seed=0)
    return model.compile(loss=loss, optimizer=lp.SGD(lr=0.1))


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 3)), rng.standard_normal((6, 2))


def test_fit_refuses_bool_batch_size_and_accepts_numpy_ints():
    model = _compiled()
    X, y = _data()
    before = {k: v.copy() for k, v in model.parameters().items()}
    with pytest.raises(ValueError, match=r"^batch_size: expected a positive int, got True$"):
        model.fit(X, y, batch_size=True, progress=False)
    for k, v in model.parameters().items():
        assert np.array_equal(v, before[k])
    h = model.fit(X, y, epochs=np.int64(2), batch_size=np.int64(2), progress=False)
    assert len(h.history["loss"]) == 2


# ------------------------------------------------------------------ every public entry point
def _fit(**kw):
    def call(v):
        X, y = _data()
        _compiled().fit(X, y, progress=False, **{k: (v if a is None else a) for k, a in kw.items()})
    return call


def _explain(fn, **kw):
    def call(v):
        X, y = _data()
        getattr(lp.explain, fn)(_compiled(), X, y, **{k: (v if a is None else a) for k, a in kw.items()})
    return call


# (argument name, call(value), a valid int for it)
INT_ARGS = {
    "Linear.in_features": ("in_features", lambda v: lp.Linear(v, 2), 3),
    "Linear.out_features": ("out_features", lambda v: lp.Linear(2, v), 3),
    "Input.features": ("features", lambda v: lp.Input(v), 3),
    "BatchNorm1d.num_features": ("num_features", lambda v: lp.BatchNorm1d(v), 3),
    "LayerNorm.num_features": ("num_features", lambda v: lp.LayerNorm(v), 3),
    "LocoProp.inner_steps": ("inner_steps", lambda v: lp.LocoProp(inner_steps=v), 2),
    "fit.epochs": ("epochs", _fit(epochs=None), 1),
    "fit.batch_size": ("batch_size", _fit(batch_size=None), 2),
    "fit.initial_epoch": ("initial_epoch", _fit(epochs=2, initial_epoch=None), 1),
    "predict.batch_size": ("batch_size", lambda v: _compiled().predict(_data()[0], batch_size=v), 2),
    "evaluate.batch_size": ("batch_size", lambda v: _compiled().evaluate(*_data(), batch_size=v), 2),
    "EarlyStopping.patience": ("patience", lambda v: lp.EarlyStopping(patience=v), 1),
    "ModelCheckpoint.every": ("every", lambda v: lp.ModelCheckpoint("m.safetensors", every=v), 1),
    "MovingTarget.every": ("every", lambda v: lp.MovingTarget(*_data(), every=v), 1),
    "gradcheck.max_entries": ("max_entries", _explain("gradcheck", max_entries=None), 3),
    "path_gradients.max_paths": ("max_paths", _explain("path_gradients", param="0.weight", index=(0, 0),
                                                       max_paths=None), 100),
    "set_num_threads.n": ("n", lambda v: lp.set_num_threads(v), 1),
    "Sequential.seed": ("seed", lambda v: lp.Sequential(lp.Linear(2, 2), seed=v), 1),
}


@pytest.fixture(autouse=True)
def _keep_threads():
    n = lp.get_num_threads()
    yield
    lp.set_num_threads(n)


@pytest.mark.parametrize("entry", list(INT_ARGS))
def test_every_int_argument_follows_one_rule(entry):
    arg, call, good = INT_ARGS[entry]
    call(good)
    call(np.int64(good))  # NumPy integers are ints everywhere
    for bad in (True, float(good), str(good)):
        with pytest.raises(ValueError, match=rf"^{arg}: expected"):
            call(bad)


# (argument name, call(value), a valid number for it)
REAL_ARGS = {
    "SGD.lr": ("lr", lambda v: lp.SGD(lr=v), 0.1),
    "SGD.momentum": ("momentum", lambda v: lp.SGD(lr=0.1, momentum=v), 0.5),
    "SGD.dampening": ("dampening", lambda v: lp.SGD(lr=0.1, momentum=0.5, dampening=v), 0.5),
    "Adam.eps": ("eps", lambda v: lp.Adam(eps=v), 0.5),
    "Adam.betas[0]": (r"betas\[0\]", lambda v: lp.Adam(betas=(v, 0.9)), 0.5),
    "AdamW.weight_decay": ("weight_decay", lambda v: lp.AdamW(weight_decay=v), 0.5),
    "LeakyReLU.negative_slope": ("negative_slope", lambda v: lp.LeakyReLU(v), 0.5),
    "Dropout.p": ("p", lambda v: lp.Dropout(v), 0.5),
    "BatchNorm1d.eps": ("eps", lambda v: lp.BatchNorm1d(2, eps=v), 0.5),
    "BatchNorm1d.momentum": ("momentum", lambda v: lp.BatchNorm1d(2, momentum=v), 0.5),
    "LayerNorm.eps": ("eps", lambda v: lp.LayerNorm(2, eps=v), 0.5),
    "LocoProp.inner_lr": ("inner_lr", lambda v: lp.LocoProp(inner_lr=v), 0.5),
    "LocoProp.target_lr": ("target_lr", lambda v: lp.LocoProp(target_lr=v), 0.5),
    "compile.clip_grad_norm": ("clip_grad_norm", lambda v: _compiled().compile(loss="mse", clip_grad_norm=v), 0.5),
    "compile.clip_grad_value": ("clip_grad_value", lambda v: _compiled().compile(loss="mse", clip_grad_value=v), 0.5),
    "EarlyStopping.min_delta": ("min_delta", lambda v: lp.EarlyStopping(min_delta=v), 0.5),
    "MovingTarget.lr": ("lr", lambda v: lp.MovingTarget(*_data(), lr=v), 0.5),
    "gradcheck.eps": ("eps", _explain("gradcheck", eps=None), 1e-6),
    "moving_target.lr": ("lr", _explain("moving_target", lr=None), 0.5),
}


@pytest.mark.parametrize("entry", list(REAL_ARGS))
def test_every_real_argument_follows_one_rule(entry):
    arg, call, good = REAL_ARGS[entry]
    call(good)
    call(np.float32(good))  # NumPy floats are numbers everywhere
    for bad in (True, str(good), math.nan, math.inf):
        with pytest.raises(ValueError, match=rf"^{arg}: expected"):
            call(bad)


def test_sklearn_int_parameters_follow_the_rule():
    pytest.importorskip("sklearn")
    from layerprop.sklearn import MLPRegressor
    from sklearn.exceptions import ConvergenceWarning
    X, y = _data()
    with pytest.warns(ConvergenceWarning):  # two iterations on purpose
        MLPRegressor(hidden_layer_sizes=(np.int64(3),), max_iter=np.int64(2), batch_size=np.int64(3),
                     random_state=0).fit(X, y[:, 0])
    for kw, arg in ((dict(max_iter=True), "max_iter"), (dict(batch_size=True), "batch_size"),
                    (dict(hidden_layer_sizes=(True,)), "hidden_layer_sizes"),
                    (dict(alpha=True), "alpha")):
        with pytest.raises(ValueError, match=rf"^{arg}: "):
            MLPRegressor(random_state=0, **kw).fit(X, y[:, 0])
