"""lp.sklearn.MLPClassifier / MLPRegressor: scikit-learn's estimator checks, its objective
(checked step by step against scikit-learn's own MLP), Pipeline, GridSearchCV, clone, pickle."""

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import layerprop as lp  # noqa: E402
from layerprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

no_convergence_warning = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# scikit-learn's checks train with the default max_iter=200 on purpose-made small data and
# some stop at max_iter: the ConvergenceWarning is legitimate there.
@no_convergence_warning
@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def blobs(n=120, classes=3, seed=0):
    X, y = make_classification(n_samples=n, n_features=8, n_informative=5, n_classes=classes,
                               random_state=seed)
    return X, y


# ----------------------------------------------------------------------------- same objective as sklearn
def one_epoch_both(ours, theirs, X, y, classes=None):
    """Give both estimators the same weights, run one full-batch plain-SGD epoch in each and
    return both. scikit-learn's estimator is initialized by a first partial_fit."""
    kw = {} if classes is None else {"classes": classes}
    theirs.partial_fit(X, y, **kw)
    ours.partial_fit(X, y, **kw)
    rng = np.random.default_rng(0)
    for i, c in enumerate(ours.coefs_):
        w = rng.uniform(-0.5, 0.5, size=c.shape)
        ours.coefs_[i][...] = w
        theirs.coefs_[i] = w.copy()
    for i, b in enumerate(ours.intercepts_):
        v = rng.uniform(-0.5, 0.5, size=b.shape)
        ours.intercepts_[i][...] = v
        theirs.intercepts_[i] = v.copy()
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    return ours, theirs


def sgd_args(alpha):
    return dict(hidden_layer_sizes=(7, 5), activation="tanh", solver="sgd", momentum=0.0,
                learning_rate_init=0.1, alpha=alpha, batch_size=40, shuffle=False, random_state=0)


def assert_same_step(ours, theirs):
    assert ours.loss_curve_[-1] == pytest.approx(theirs.loss_curve_[-1], rel=1e-12)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_regressor_step_equals_sklearn(alpha, n_outputs):
    X, y = make_regression(n_samples=40, n_features=6, n_targets=n_outputs, random_state=1)
    y = y / y.std()
    ours, theirs = one_epoch_both(MLPRegressor(**sgd_args(alpha)), SkMLPRegressor(**sgd_args(alpha)), X, y)
    assert_same_step(ours, theirs)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_classifier_step_equals_sklearn(alpha, kind):
    X, y = blobs(n=40, classes=2 if kind == "binary" else 4)
    classes = np.unique(y)
    if kind == "multilabel":
        y = np.stack([y == 0, y >= 2, y % 2 == 1], axis=1).astype(int)
        classes = np.arange(3)  # scikit-learn asks for them even for multilabel targets
    ours, theirs = one_epoch_both(MLPClassifier(**sgd_args(alpha)), SkMLPClassifier(**sgd_args(alpha)),
                                  X, y, classes)
    assert ours.out_activation_ == theirs.out_activation_
    assert_same_step(ours, theirs)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-10, atol=1e-12)
    assert np.array_equal(ours.predict(X), theirs.predict(X))


@no_convergence_warning
def test_digits_accuracy_close_to_sklearn():
    d = load_digits()
    X, y = d.data / 16.0, d.target
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
    ours = MLPClassifier(hidden_layer_sizes=(64,), max_iter=30, random_state=0).fit(Xtr, ytr)
    theirs = SkMLPClassifier(hidden_layer_sizes=(64,), max_iter=30, random_state=0).fit(Xtr, ytr)
    assert ours.score(Xte, yte) > 0.88
    assert ours.score(Xte, yte) > theirs.score(Xte, yte) - 0.04
    assert len(ours.loss_curve_) == ours.n_iter_ == 30
    assert ours.best_loss_ == min(ours.loss_curve_)
    assert ours.t_ == 30 * 1200


# ----------------------------------------------------------------------------- behaviour
def test_string_labels_and_proba():
    X, y = blobs()
    labels = np.array(["cat", "dog", "emu"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01, max_iter=60, random_state=0,
                        n_iter_no_change=100)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        clf.fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    assert set(clf.predict(X)) <= {"cat", "dog", "emu"}
    p = clf.predict_proba(X)
    assert p.shape == (len(X), 3) and np.allclose(p.sum(axis=1), 1)
    assert np.array_equal(clf.classes_[p.argmax(axis=1)], clf.predict(X))
    assert clf.score(X, labels) > 0.8


def test_binary_has_one_logistic_output_like_sklearn():
    X, y = blobs(classes=2)
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, np.where(y == 1, -3, 10))
    assert [c.shape for c in clf.coefs_] == [(8, 5), (5, 1)]
    assert [b.shape for b in clf.intercepts_] == [(5,), (1,)]
    assert list(clf.classes_) == [-3, 10] and clf.out_activation_ == "logistic"
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 1


def test_coefs_are_views_in_sklearn_layout():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(6, 4), max_iter=3, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert [c.shape for c in clf.coefs_] == [(8, 6), (6, 4), (4, 3)]
    assert np.array_equal(clf.coefs_[0], clf.model_.parameters()["0.weight"].T)
    # Manual forward pass with coefs_/intercepts_ reproduces predict_proba.
    h = np.maximum(X @ clf.coefs_[0] + clf.intercepts_[0], 0)
    h = np.maximum(h @ clf.coefs_[1] + clf.intercepts_[1], 0)
    z = h @ clf.coefs_[2] + clf.intercepts_[2]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(X), e / e.sum(axis=1, keepdims=True), rtol=1e-10)
    clf.coefs_[2][...] = 0
    clf.intercepts_[2][...] = [0, 0, 1]
    assert (clf.predict(X) == 2).all()
    with pytest.raises(ValueError, match=r"coefs_\[0\]"):
        clf.coefs_ = [np.zeros((2, 2))]


@no_convergence_warning
def test_multi_output_regression():
    X, y = make_regression(n_samples=150, n_features=5, n_targets=3, random_state=0)
    y = y / y.std(axis=0)
    reg = MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=200, random_state=0).fit(X, y)
    assert reg.predict(X).shape == (150, 3) and reg.coefs_[-1].shape == (32, 3)
    assert reg.score(X, y) > 0.9
    one = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(X, y[:, 0])
    assert one.predict(X).shape == (150,)


def test_loss_curve_stopping_rule_and_verbose(capsys):
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(16,), learning_rate_init=0.05, tol=10.0, n_iter_no_change=3, random_state=0)
    clf = MLPClassifier(verbose=True, **kw).fit(X, y)
    # tol=10: no epoch after the first counts as an improvement; the count must exceed
    # n_iter_no_change, so 1 + (3 + 1) epochs run, as in scikit-learn.
    assert clf.n_iter_ == 5 == SkMLPClassifier(**kw).fit(X, y).n_iter_
    assert len(clf.loss_curve_) == 5
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "did not improve more than tol=10.000000 for 3" in out


def test_early_stopping_keeps_the_best_validation_epoch(monkeypatch):
    X, y = blobs(n=200)
    kw = dict(hidden_layer_sizes=(16,), early_stopping=True, validation_fraction=0.25,
              n_iter_no_change=4, tol=0.5, random_state=0)
    seen = []
    real = MLPClassifier._validation_score
    monkeypatch.setattr(MLPClassifier, "_validation_score",
                        lambda self, Xv, yv, *rest: seen.append((Xv, yv)) or real(self, Xv, yv, *rest))
    clf = MLPClassifier(**kw).fit(X, y)
    assert clf.n_iter_ == 6 == SkMLPClassifier(**kw).fit(X, y).n_iter_
    assert len(clf.validation_scores_) == 6 and len(seen) == 6 and len(seen[0][0]) == 50
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None
    # An unstable run (large SGD steps) whose best epoch is the first: its weights are kept.
    seen.clear()
    wild = MLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=2.0, batch_size=10,
                         early_stopping=True, validation_fraction=0.25, n_iter_no_change=4, tol=0.0,
                         random_state=0).fit(X, y)
    scores = wild.validation_scores_
    assert np.argmax(scores) == 0 and scores[-1] < scores[0]
    assert real(wild, *seen[-1]) == wild.best_validation_score_ == scores[0]


def test_random_state_reproducible():
    X, y = blobs()
    kw = dict(hidden_layer_sizes=(8,), max_iter=4)
    with pytest.warns(ConvergenceWarning):
        a = MLPClassifier(random_state=3, **kw).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        b = MLPClassifier(random_state=3, **kw).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        c = MLPClassifier(random_state=4, **kw).fit(X, y)
    assert a.loss_curve_ == b.loss_curve_ and a.loss_curve_ != c.loss_curve_


def test_partial_fit_needs_classes_and_rejects_new_ones():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:10], y[:10], classes=[0, 1, 2, 3])
    assert list(clf.classes_) == [0, 1, 2, 3] and clf.n_iter_ == 1
    clf.partial_fit(X, y)
    # scikit-learn's n_iter_ counts the epochs of the last call; t_ counts every sample seen
    assert clf.n_iter_ == 1 and clf.t_ == 10 + len(X)
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X, y + 10)


def test_partial_fit_refuses_early_stopping_like_sklearn():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(8,), early_stopping=True, n_iter_no_change=2, tol=1.0,
                        random_state=0).fit(X, y)
    before = [c.copy() for c in clf.coefs_]
    with pytest.raises(ValueError, match="early_stopping"):
        clf.partial_fit(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, clf.coefs_))
    n = len(clf.loss_curve_)
    clf.set_params(early_stopping=False).partial_fit(X, y)
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == n + 1 and clf.best_loss_ == clf.loss_curve_[-1]
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y)


def test_float32_input_trains_a_float32_model():
    X, y = blobs()
    with pytest.warns(ConvergenceWarning):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X.astype(np.float32), y)
    assert clf.model_.dtype == "float32" and clf.coefs_[0].dtype == np.float32
    assert clf.predict(X).shape == (len(X),)


def test_schedule_is_passed_to_compile():
    X, y = blobs()
    with pytest.warns(ConvergenceWarning):
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1, schedule=lp.Simultaneous(), random_state=0).fit(X, y)
    assert isinstance(clf.model_.schedule, lp.Simultaneous)


@pytest.mark.parametrize("schedule", ["layerwise", "locoprop"])
def test_other_schedules_run_inside_the_core(schedule):
    if not hasattr(lp, "Layerwise"):
        pytest.skip("no Layerwise/LocoProp in this build")
    make = {"layerwise": lambda: lp.Layerwise(order="bottom_up"),
            "locoprop": lambda: lp.LocoProp(variant="S", inner_steps=2)}[schedule]
    X, y = make_regression(n_samples=30, n_features=4, random_state=0)
    y = y / y.std()
    kw = dict(hidden_layer_sizes=(6,), solver="sgd", momentum=0.0, learning_rate_init=0.05, alpha=0.0,
              batch_size=30, shuffle=False, random_state=0)
    est = MLPRegressor(schedule=make(), **kw).partial_fit(X, y)
    plain = MLPRegressor(**kw).partial_fit(X, y)
    # Same initial weights (same random_state); the schedule makes the first step differ.
    assert not all(np.array_equal(a, b) for a, b in zip(est.coefs_, plain.coefs_))
    # The next epoch is exactly one core train_step with that schedule (sklearn's gradient
    # scale 1/2 for one output folded into SGD's step size).
    twin = lp.Sequential(lp.Linear(4, 6), lp.ReLU(), lp.Linear(6, 1), dtype="float64")
    for k, v in est.model_.parameters().items():
        twin.parameters()[k][...] = v
    twin.compile(loss="mse", optimizer=lp.SGD(lr=0.05 * 0.5), schedule=make())
    loss = twin.train_step(X, y.reshape(-1, 1))
    est.partial_fit(X, y)
    assert est.loss_curve_[-1] == pytest.approx(0.5 * loss, rel=1e-12)
    for k, v in est.model_.parameters().items():
        np.testing.assert_allclose(v, twin.parameters()[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("param, value", [

    ("solver", "newton"), ("activation", "softmax"), ("hidden_layer_sizes", (0,)),
    ("hidden_layer_sizes", "big"), ("batch_size", 0), ("batch_size", "all"), ("alpha", -1.0),
    ("learning_rate_init", 0.0), ("max_iter", 0), ("n_iter_no_change", 0), ("momentum", 1.5),
    ("beta_1", 1.0), ("epsilon", 0.0), ("tol", -1.0), ("schedule", "simultaneous"),
])
def test_bad_parameters_are_named(param, value):
    X, y = blobs()
    clf = MLPClassifier(**{param: value})
    with pytest.raises(ValueError, match=param):
        clf.fit(X, y)
    assert "model_" not in vars(clf)


def test_validation_fraction_checked_with_early_stopping():
    X, y = blobs()
    with pytest.raises(ValueError, match="validation_fraction"):
        MLPClassifier(early_stopping=True, validation_fraction=1.0).fit(X, y)


# ----------------------------------------------------------------------------- ecosystem
@no_convergence_warning
def test_pipeline_and_grid_search():
    X, y = blobs(n=150)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01,
                                                         max_iter=100, random_state=0))
    assert pipe.fit(X, y).score(X, y) > 0.85
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1], "mlpclassifier__hidden_layer_sizes": [(4,), (16,)]},
                        cv=2)
    grid.fit(X, y)
    assert set(grid.best_params_) == {"mlpclassifier__alpha", "mlpclassifier__hidden_layer_sizes"}
    assert grid.score(X, y) > 0.8


def test_clone_keeps_parameters_only():
    X, y = blobs()
    clf = MLPClassifier(hidden_layer_sizes=(3, 2), alpha=0.5, schedule=lp.Simultaneous(), random_state=1)
    with pytest.warns(ConvergenceWarning):
        clf.set_params(max_iter=2).fit(X, y)
    c = clone(clf)
    assert c.get_params()["hidden_layer_sizes"] == (3, 2) and c.alpha == 0.5
    assert "model_" not in vars(c)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_pickle_and_deepcopy_fitted(cls):
    X, y = blobs()
    est = cls(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    with pytest.warns(ConvergenceWarning):
        est.fit(X, y)
    state = est.__getstate__()
    assert "model_" not in state
    assert all(type(v).__module__ in ("builtins", "numpy") for v in state["_lp_model_state"][0].values())
    blob = pickle.dumps(est)
    assert b"ModelF" not in blob  # the core object is never pickled
    back = pickle.loads(blob)
    twin = copy.deepcopy(est)
    for other in (back, twin):
        assert np.array_equal(other.predict(X), est.predict(X))
        assert other.loss_curve_ == est.loss_curve_
    # The optimizer state travels too: one more epoch agrees bitwise.
    est.partial_fit(X, y)
    back.partial_fit(X, y)
    for a, b in zip(est.coefs_, back.coefs_):
        assert np.array_equal(a, b)
    assert back.model_ is not est.model_


def test_unfitted_pickles_and_has_no_coefs():
    clf = pickle.loads(pickle.dumps(MLPClassifier(alpha=0.3)))
    assert clf.alpha == 0.3 and not hasattr(clf, "coefs_")


def test_import_layerprop_does_not_import_sklearn():
    code = ("import sys, layerprop as lp; assert 'sklearn' not in sys.modules; "
            "m = lp.sklearn.MLPRegressor; assert 'sklearn' in sys.modules; print(m.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MLPRegressor"
