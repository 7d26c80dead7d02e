"""lp.sklearn against scikit-learn's own MLP on the behaviours a scikit-learn user relies on:
n_iter_ per fit, output dtypes, the early-stopping split (stratification, its size), warm
starts with another class set, and a validation score that is NaN rather than an error."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkC  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkR  # noqa: E402

from layerprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*a, **k)


def blobs(n=120, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.standard_normal((n, d)) + y[:, None], y


def same_start(cls, sk, X, y, **first):
    """Ours and scikit-learn's estimator, each fitted once with `first` (to build the network),
    then given our weights and our stopping rule's memory: both continue from the same state."""
    ours, theirs = cls(**first), sk(**first)
    quiet(ours.fit, X, y)
    quiet(theirs.fit, X, y)
    for i in range(len(ours.coefs_)):
        theirs.coefs_[i][...] = ours.coefs_[i]
        theirs.intercepts_[i][...] = ours.intercepts_[i]
    theirs.best_loss_, theirs.loss_curve_ = ours.best_loss_, list(ours.loss_curve_)
    return ours, theirs


@pytest.mark.parametrize("cls,sk", [(MLPClassifier, SkC), (MLPRegressor, SkR)])
def test_n_iter_counts_the_epochs_of_each_call_like_sklearn(cls, sk):
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(5,), max_iter=3, warm_start=True, random_state=0)
    ours, theirs = cls(**kw), sk(**kw)
    for _ in range(2):
        quiet(ours.fit, X, y)
        quiet(theirs.fit, X, y)
    assert ours.n_iter_ == theirs.n_iter_ == 3
    assert len(ours.loss_curve_) == len(theirs.loss_curve_) == 6
    assert ours.t_ == theirs.t_
    p, q = cls(hidden_layer_sizes=(5,), random_state=0), sk(hidden_layer_sizes=(5,), random_state=0)
    extra = {"classes": [0, 1, 2]} if cls is MLPClassifier else {}
    for _ in range(2):
        p.partial_fit(X, y, **extra)
        q.partial_fit(X, y, **extra)
        extra = {}
    assert p.n_iter_ == q.n_iter_ == 1 and p.t_ == q.t_ == 2 * len(X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_keep_the_input_dtype_like_sklearn(dtype):
    X, y = blobs()
    X = X.astype(dtype)
    kw = dict(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    for cls, sk, method in ((MLPClassifier, SkC, "predict_proba"), (MLPRegressor, SkR, "predict")):
        ours, theirs = quiet(cls(**kw).fit, X, y), quiet(sk(**kw).fit, X, y)
        assert getattr(ours, method)(X).dtype == getattr(theirs, method)(X).dtype == dtype
        # float64 data given to a float32 model gives float64, as in scikit-learn
        assert getattr(ours, method)(X.astype(np.float64)).dtype == getattr(theirs, method)(
            X.astype(np.float64)).dtype


def test_early_stopping_split_is_sklearns(monkeypatch):
    # scikit-learn stratifies the held-out split when the network has one output (binary), not
    # for multiclass targets; the same random state gives the same rows.
    import layerprop.sklearn as lps
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    calls = []
    real = lps.train_test_split

    def spy(*a, **k):  # the estimator splits row indices: (train rows, validation rows)
        out = real(*a, **k)
        calls.append((k.get("stratify"), out[1]))
        return out

    monkeypatch.setattr(lps, "train_test_split", spy)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = (np.arange(200) % 10 == 0).astype(int)  # 10% positives
    kw = dict(hidden_layer_sizes=(4,), early_stopping=True, validation_fraction=0.1, max_iter=2,
              random_state=0)
    quiet(MLPClassifier(**kw).fit, X, y)
    stratify, va = calls[-1]
    yv = y.reshape(-1, 1).astype(float)[va]
    assert stratify is not None and int(yv.sum()) == 2 and len(yv) == 20  # exactly 10% held out
    expect = train_test_split(X, y.reshape(-1, 1).astype(float), random_state=check_random_state(0),
                              test_size=0.1, stratify=y.reshape(-1, 1))[3]
    assert np.array_equal(yv, expect)
    Xm, ym = blobs(n=200)
    quiet(MLPClassifier(**kw).fit, Xm, ym)
    assert calls[-1][0] is None  # multiclass: not stratified, as in scikit-learn
    with pytest.raises(ValueError, match="y: .*least populated class"):
        MLPClassifier(**kw).fit(X[:21], np.r_[np.zeros(20, int), 1])


def test_a_validation_split_of_one_sample_is_refused_like_sklearn():
    X, y = blobs(n=12)
    kw = dict(hidden_layer_sizes=(4,), early_stopping=True, validation_fraction=0.05, random_state=0)
    with pytest.raises(ValueError, match="The validation set is too small"):
        SkR(**kw).fit(X, y.astype(float))
    est = MLPRegressor(**kw)
    with pytest.raises(ValueError, match="validation_fraction: The validation set is too small"):
        est.fit(X, y.astype(float))
    assert not hasattr(est, "model_")  # refused: nothing was set


def test_warm_start_with_another_class_set_is_refused_like_sklearn():
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(4,), max_iter=2, warm_start=True, random_state=0)
    ours, theirs = quiet(MLPClassifier(**kw).fit, X, y), quiet(SkC(**kw).fit, X, y)
    sub = y < 2
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same classes"):
        theirs.fit(X[sub], y[sub])
    before = [c.copy() for c in ours.coefs_]
    with pytest.raises(ValueError, match="y: warm_start can only be used where `y` has the same classes"):
        ours.fit(X[sub], y[sub])
    assert list(ours.classes_) == [0, 1, 2]
    assert all(np.array_equal(a, b) for a, b in zip(before, ours.coefs_))
    quiet(ours.fit, X, y)  # the same classes: a warm start


def test_a_non_finite_validation_output_scores_nan_like_sklearn():
    X, y = blobs()
    est = quiet(MLPRegressor(hidden_layer_sizes=(4,), early_stopping=True, max_iter=3,
                             random_state=0).fit, X, y.astype(float))
    est.model_.parameters()["0.weight"][...] = np.inf  # outputs are no longer finite
    assert np.isnan(est._validation_score(X[:5], np.zeros((5, 1))))


def test_setting_coefs_and_intercepts_writes_into_the_model():
    X, y = blobs()
    est = quiet(MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit, X, y.astype(float))
    W = np.arange(4 * 4, dtype=float).reshape(4, 4) / 10
    est.coefs_[0] = W
    assert np.array_equal(est.coefs_[0], W)
    est.intercepts_[1] = np.array([2.5])
    assert est.intercepts_[1][0] == 2.5
    # the model predicts with them: a twin scikit-learn forward pass
    h = np.maximum(X @ est.coefs_[0] + est.intercepts_[0], 0)
    assert np.allclose(est.predict(X), (h @ est.coefs_[1] + est.intercepts_[1]).ravel())
    est.coefs_ = [np.zeros((4, 4)), np.ones((4, 1))]
    assert np.array_equal(est.coefs_[1], np.ones((4, 1)))
    before = [c.copy() for c in est.coefs_]
    with pytest.raises(ValueError, match=r"coefs_\[0\]: expected shape \(4, 4\)"):
        est.coefs_[0] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"coefs_\[1\]: expected shape"):
        est.coefs_ = [np.ones((4, 4)), np.ones((5, 1))]  # all or nothing: the first is not written
    with pytest.raises(ValueError, match=r"intercepts_\[0\]: contains NaN"):
        est.intercepts_[0] = np.full(4, np.nan)
    assert all(np.array_equal(a, b) for a, b in zip(before, est.coefs_))


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_learning_rate_schedules_follow_sklearns_rules(schedule, nesterov):
    # Both estimators start from the same weights (set through coefs_/intercepts_ after a first
    # fit of one epoch at a negligible rate), then a warm-started fit, in which scikit-learn
    # makes a new optimizer, runs the same batches (no shuffling) by the same rules.
    X, y = blobs(n=60)
    y = y.astype(float) + 0.1 * X[:, 0]
    kw = dict(hidden_layer_sizes=(5,), solver="sgd", learning_rate=schedule, power_t=0.3, momentum=0.8,
              nesterovs_momentum=nesterov, learning_rate_init=0.05, batch_size=20, shuffle=False,
              max_iter=12, n_iter_no_change=1, tol=0.1, alpha=1e-3, random_state=0)
    ours, theirs = same_start(MLPRegressor, SkR, X, y, **{**kw, "max_iter": 1, "learning_rate_init": 1e-12})
    for est in (ours, theirs):
        est.set_params(**kw, warm_start=True)
        quiet(est.fit, X, y)
    assert ours.n_iter_ == theirs.n_iter_ > 2
    assert np.allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-9)
    lr = kw["learning_rate_init"] * ours._lr_factor  # the rate the schedule has reached
    assert lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)
    if schedule != "constant":
        assert lr < kw["learning_rate_init"]
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert np.allclose(a, b, rtol=1e-8, atol=1e-11)


def test_n_iter_no_change_may_be_infinite_like_sklearn():
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(4,), max_iter=6, n_iter_no_change=np.inf, tol=100.0, random_state=0)
    with pytest.warns(ConvergenceWarning):
        ours = MLPClassifier(**kw).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        theirs = SkC(**kw).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ == 6  # never stops for lack of improvement
    with pytest.raises(ValueError, match="learning_rate: expected"):
        MLPClassifier(learning_rate="optimal").fit(X, y)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "regression"])
def test_lbfgs_matches_sklearn_from_the_same_weights(kind):
    X, y = blobs(n=80)
    cls, sk = (MLPRegressor, SkR) if kind == "regression" else (MLPClassifier, SkC)
    if kind == "binary":
        y = y % 2
    if kind == "regression":
        y = y.astype(float) + 0.3 * X[:, 1]
    kw = dict(hidden_layer_sizes=(6,), activation="tanh", solver="lbfgs", alpha=1e-3, max_iter=30,
              tol=1e-9, random_state=0)
    ours, theirs = same_start(cls, sk, X, y, **{**kw, "max_iter": 1})
    for est in (ours, theirs):
        est.set_params(max_iter=30, warm_start=True)
        quiet(est.fit, X, y)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-6)
    pred = "predict_proba" if kind != "regression" else "predict"
    np.testing.assert_allclose(getattr(ours, pred)(X), getattr(theirs, pred)(X), rtol=1e-4, atol=1e-6)
    assert hasattr(ours, "partial_fit") == hasattr(theirs, "partial_fit") == (kind == "regression")


def test_lbfgs_warns_when_it_stops_at_max_iter_like_sklearn():
    X, y = blobs()
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="max_fun"):
        MLPClassifier(solver="lbfgs", max_fun=0).fit(X, y)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_sample_weight_matches_sklearn_from_the_same_weights(solver, kind):
    X, y = blobs(n=60)
    cls, sk = (MLPClassifier, SkC) if kind == "classifier" else (MLPRegressor, SkR)
    if kind == "regressor":
        y = y.astype(float) + 0.2 * X[:, 0]
    sw = np.random.default_rng(3).random(60) * 2
    kw = dict(hidden_layer_sizes=(5,), solver=solver, learning_rate_init=0.05, batch_size=20, shuffle=False,
              momentum=0.0, alpha=1e-2, max_iter=4, tol=1e-9, n_iter_no_change=100, random_state=0)
    ours, theirs = same_start(cls, sk, X, y, **{**kw, "max_iter": 1, "learning_rate_init": 1e-12})
    for est in (ours, theirs):
        est.set_params(**kw, warm_start=True)
        quiet(est.fit, X, y, sample_weight=sw)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="sample_weight"):
        ours.fit(X, y, sample_weight=np.ones(3))


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_poisson_regression_matches_sklearn_from_the_same_weights(solver):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    y = rng.poisson(np.exp(0.4 * X[:, 0] + 0.2)).astype(float)
    kw = dict(loss="poisson", hidden_layer_sizes=(5,), solver=solver, learning_rate_init=0.02, batch_size=20,
              shuffle=False, momentum=0.0, alpha=1e-3, max_iter=5, tol=1e-9, n_iter_no_change=100, random_state=0)
    ours, theirs = same_start(MLPRegressor, SkR, X, y, **{**kw, "max_iter": 1, "learning_rate_init": 1e-12})
    for est in (ours, theirs):
        est.set_params(**kw, warm_start=True)
        quiet(est.fit, X, y)
    assert ours.out_activation_ == theirs.out_activation_ == "exp"
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-7)
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-6)
    with pytest.raises(ValueError, match="not allowed for Poisson regression"):
        MLPRegressor(loss="poisson").fit(X, -y - 1)
    with pytest.raises(ValueError, match="loss: expected 'squared_error' or 'poisson'"):
        MLPRegressor(loss="huber").fit(X, y)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_core_apply_gradients_l2_on_weights_equals_adding_it_by_hand(opt):
    # The estimators' alpha penalty, fused into the optimizer's pass, gives the same bits as
    # g * scale + l2 * W written into the gradients first (biases get no penalty).
    import layerprop as lp
    X, y = blobs(n=64, d=5)

    def make():
        m = lp.Sequential(lp.Linear(5, 7), lp.ReLU(), lp.Linear(7, 3), dtype="float64", seed=2)
        m.compile(loss="cross_entropy",
                  optimizer=lp.SGD(0.1, momentum=0.9) if opt == "sgd" else lp.Adam(0.01))
        return m
    a, b = make(), make()
    for _ in range(3):
        a.compute_gradients(X, y)
        b.compute_gradients(X, y)
        for name, g in b.gradients().items():
            g *= 0.75
            if name.endswith(".weight"):
                g += 0.3 * b.parameters()[name]
        a._apply_penalized(l2_weights=0.3, grad_scale=0.75)
        b.apply_gradients()
    for name, p in a.parameters().items():
        assert np.array_equal(p, b.parameters()[name]), name
    with pytest.raises(ValueError, match="l2_weights"):
        a._core.apply_gradients(l2_weights=-1.0)
    with pytest.raises(ValueError, match="grad_scale"):
        a._core.apply_gradients(grad_scale=float("nan"))
