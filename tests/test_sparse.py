"""Sparse input (scipy.sparse X): the CSR kernels against their naive twins and SciPy, models
trained on sparse X against the same models on the dense X, hostile sparse input, and the
scikit-learn estimators on sparse data against scikit-learn's own MLP."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

sp = pytest.importorskip("scipy.sparse")

import layerprop as lp  # noqa: E402
from layerprop import _core  # noqa: E402
from layerprop.sparse import CsrRows, as_csr_rows, take_rows  # noqa: E402


def csr(n, d, density, seed=0, dtype=np.float64):
    return sp.random(n, d, density=density, format="csr", random_state=seed, dtype=dtype)


def arrays(X):
    X = X.tocsr()
    return X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data


# ---------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,d,out,density", [(1, 1, 1, 1.0), (1, 5000, 7, 0.001), (3, 17, 5, 0.3),
                                             (70, 300, 37, 0.03), (257, 1000, 64, 0.01),
                                             (64, 200, 129, 0.2)])
def test_csr_kernels_equal_their_naive_twins_bitwise_and_scipy(dtype, n, d, out, density):
    rng = np.random.default_rng(n + d)
    X = csr(n, d, density, seed=n, dtype=dtype)
    p, i, v = arrays(X)
    W = rng.standard_normal((out, d)).astype(dtype)
    y = _core._csr_linear(p, i, v, W)
    assert np.array_equal(y, _core._csr_linear(p, i, v, W, naive=True))
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(y, X.toarray().astype(np.float64) @ W.T.astype(np.float64), atol=tol, rtol=tol)
    dz = rng.standard_normal((n, out)).astype(dtype)
    g = _core._csr_weight_grad(p, i, v, dz, d)
    assert np.array_equal(g, _core._csr_weight_grad(p, i, v, dz, d, naive=True))
    np.testing.assert_allclose(g, dz.T.astype(np.float64) @ X.toarray().astype(np.float64), atol=tol, rtol=tol)
    acc = rng.standard_normal((out, d)).astype(dtype)
    g2 = _core._csr_weight_grad(p, i, v, dz, d, accumulate=acc)
    assert np.array_equal(g2, _core._csr_weight_grad(p, i, v, dz, d, accumulate=acc, naive=True))


def test_csr_kernels_duplicates_empty_rows_and_unsorted_columns():
    # Row 0 empty, row 1 with a repeated column (entries add up, as in SciPy), row 2 unsorted.
    p = np.array([0, 0, 3, 5], dtype=np.int64)
    i = np.array([2, 2, 0, 3, 1], dtype=np.int64)
    v = np.array([1.0, 2.0, -1.0, 0.5, 4.0])
    X = sp.csr_matrix((v, i, p), shape=(3, 4))
    W = np.arange(8.0).reshape(2, 4)
    np.testing.assert_array_equal(_core._csr_linear(p, i, v, W), X.toarray() @ W.T)
    dz = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]])
    np.testing.assert_array_equal(_core._csr_weight_grad(p, i, v, dz, 4), dz.T @ X.toarray())


def test_csr_kernels_give_the_same_bits_on_any_thread_count():
    rng = np.random.default_rng(3)
    X = csr(512, 4000, 0.01, seed=3, dtype=np.float32)
    p, i, v = arrays(X)
    W = rng.standard_normal((96, 4000)).astype(np.float32)
    dz = rng.standard_normal((512, 96)).astype(np.float32)
    old = lp.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            lp.set_num_threads(t)
            outs.append((_core._csr_linear(p, i, v, W), _core._csr_weight_grad(p, i, v, dz, 4000)))
    finally:
        lp.set_num_threads(old)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("bad,match", [
    (lambda p, i, v: (p[::-1].copy(), i, v), "indptr"),
    (lambda p, i, v: (p, i + 10**6, v), "indices"),
    (lambda p, i, v: (p, -i - 1, v), "indices"),
    (lambda p, i, v: (p, i, v[:-1].copy()), "data"),
    (lambda p, i, v: (p.astype(np.int32), i, v), "indptr"),
])
def test_csr_kernel_hooks_refuse_bad_arrays(bad, match):
    p, i, v = arrays(csr(10, 50, 0.2))
    with pytest.raises((ValueError, TypeError), match=match):
        _core._csr_linear(*bad(p, i, v), np.ones((3, 50)))


# ----------------------------------------------------------------------------------- models
def mlp(d, dtype="float64", schedule=None, optimizer=None, loss="cross_entropy", out=3, extra=()):
    m = lp.Sequential(lp.Linear(d, 16), lp.ReLU(), *extra, lp.Linear(16, out), dtype=dtype, seed=0)
    m.compile(loss=loss, optimizer=optimizer or lp.Adam(0.01), schedule=schedule)
    return m


def params_close(a, b, tol):
    pa, pb = a.parameters(), b.parameters()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=tol, rtol=tol, err_msg=k)


SCHEDULES = [lp.Simultaneous(), lp.Layerwise("top_down"), lp.Layerwise("bottom_up"),
             lp.LocoProp("S", inner_steps=3), lp.LocoProp("M", inner_steps=3)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_fit_on_sparse_X_equals_fit_on_dense_X(schedule, fmt):
    X = csr(300, 800, 0.02, seed=1).asformat(fmt)
    y = np.random.default_rng(0).integers(0, 3, 300)
    a, b = mlp(800, schedule=schedule), mlp(800, schedule=schedule)
    ha = a.fit(X, y, epochs=2, batch_size=50, progress=False)
    hb = b.fit(X.toarray(), y, epochs=2, batch_size=50, progress=False)
    params_close(a, b, 1e-10)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(a.predict(X), b.predict(X.toarray()), atol=1e-12)
    ea, eb = a.evaluate(X, y), b.evaluate(X.toarray(), y)
    assert ea["accuracy"] == eb["accuracy"] and ea["loss"] == pytest.approx(eb["loss"], rel=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inference_on_many_sparse_rows_transposes_once_and_gives_the_same_bits(dtype):
    # 3,000 rows x 400 columns: predict/evaluate transpose the first weight once for the call;
    # a few rows at a time gather from it instead. Both sum every output in the same order
    # (a one-layer model: the dense GEMM after it may take other paths for other row counts).
    X = csr(3000, 400, 0.02, seed=11)
    y = np.random.default_rng(7).integers(0, 3, 3000)
    lin = lp.Sequential(lp.Linear(400, 3), dtype=dtype, seed=0)
    many = lin.predict(X)
    few = np.concatenate([lin.predict(X[i:i + 3]) for i in range(0, 3000, 3)])
    assert np.array_equal(many, few)
    m = mlp(400, dtype)
    many = m.predict(X)
    ev = m.evaluate(X, y)
    ev_few = [m.evaluate(X[i:i + 3], y[i:i + 3]) for i in range(0, 3000, 3)]
    assert ev["accuracy"] == pytest.approx(np.mean([e["accuracy"] for e in ev_few]))
    m.fit(X, y, epochs=1, progress=False)  # training after inference uses the new weights
    assert not np.array_equal(m.predict(X), many)
    np.testing.assert_allclose(m.predict(X), m.predict(X.toarray()), rtol=2e-5 if dtype == "float32" else 1e-12,
                               atol=1e-6 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_steps_gradients_and_losses_on_sparse_X(dtype):
    X = csr(64, 500, 0.05, seed=2)
    y = np.random.default_rng(1).standard_normal((64, 2))
    a = mlp(500, dtype, loss="mse", out=2, optimizer=lp.SGD(0.05, momentum=0.9))
    b = mlp(500, dtype, loss="mse", out=2, optimizer=lp.SGD(0.05, momentum=0.9))
    tol = 1e-12 if dtype == "float64" else 2e-5
    la, ga = a.loss_and_grads(X, y)
    lb, gb = b.loss_and_grads(X.toarray(), y)
    assert la == pytest.approx(lb, rel=tol)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], atol=tol, rtol=tol)
    for _ in range(3):
        assert a.train_step(X, y) == pytest.approx(b.train_step(X.toarray(), y), rel=tol)
    a.compute_gradients(X[:10], y[:10], sample_weight=np.arange(10.0))
    b.compute_gradients(X[:10].toarray(), y[:10], sample_weight=np.arange(10.0))
    a.apply_gradients()
    b.apply_gradients()
    params_close(a, b, 10 * tol)


def test_float64_sparse_data_is_converted_once_for_a_float32_model_and_int_data_refused():
    X = csr(40, 100, 0.1, seed=4)
    y = np.zeros(40, dtype=np.int64)
    m = mlp(100, "float32")
    assert m.predict(X).dtype == np.float32
    np.testing.assert_allclose(m.predict(X), m.predict(X.toarray().astype(np.float32)), atol=1e-6)
    with pytest.raises(TypeError, match="X: expected dtype float32"):
        m.train_step(X.astype(np.int64), y)


def test_an_input_read_by_more_than_a_linear_layer_densifies_each_batch():
    # The input feeds a Linear and a skip connection (Concat): still correct, batch by batch.
    x = lp.Input(300)
    h = lp.ReLU()(lp.Linear(300, 8)(x))
    out = lp.Linear(308, 2)(lp.concat([h, x]))
    X = csr(120, 300, 0.05, seed=5)
    y = np.random.default_rng(2).integers(0, 2, 120)

    def make():
        m = lp.Model(inputs=x, outputs=out, dtype="float64", seed=3)
        m.compile(loss="cross_entropy", optimizer=lp.SGD(0.1))
        return m
    a, b = make(), make()
    a.fit(X, y, epochs=2, batch_size=32, progress=False)
    b.fit(X.toarray(), y, epochs=2, batch_size=32, progress=False)
    params_close(a, b, 1e-12)
    np.testing.assert_allclose(a.predict(X), b.predict(X.toarray()), atol=1e-12)


def test_sparse_X_with_batchnorm_and_dropout_after_the_first_layer():
    X = csr(200, 400, 0.03, seed=6)
    y = np.random.default_rng(3).integers(0, 3, 200)
    extra = (lp.BatchNorm1d(16), lp.Dropout(0.2))
    a = lp.Sequential(lp.Linear(400, 16), *extra, lp.ReLU(), lp.Linear(16, 3), dtype="float64", seed=1)
    b = lp.Sequential(lp.Linear(400, 16), lp.BatchNorm1d(16), lp.Dropout(0.2), lp.ReLU(), lp.Linear(16, 3),
                      dtype="float64", seed=1)
    for m in (a, b):  # SGD: the first bias's gradient is ~0 before BatchNorm, which Adam would magnify
        m.compile(loss="cross_entropy", optimizer=lp.SGD(0.05, momentum=0.9))
    a.fit(X, y, epochs=2, batch_size=40, progress=False)
    b.fit(X.toarray(), y, epochs=2, batch_size=40, progress=False)
    params_close(a, b, 1e-10)
    for k, v in a.buffers().items():
        np.testing.assert_allclose(v, b.buffers()[k], atol=1e-10)


# ---------------------------------------------------------------------------- hostile input
def hostile_cases(X):
    p, i, v = arrays(X)
    d = X.shape[1]
    return {
        "index out of range": (CsrRows((p, i + d, v, d)), ValueError, "X: column index"),
        "negative index": (CsrRows((p, -1 - i, v, d)), ValueError, "X: column index"),
        "indptr decreasing": (CsrRows((p[::-1].copy(), i, v, d)), ValueError, "X: indptr"),
        "indptr past the end": (CsrRows((p + 1, i, v, d)), ValueError, "X: indptr"),
        "data shorter": (CsrRows((p, i, v[:-1].copy(), d)), ValueError, "X: sparse data"),
        "NaN value": (CsrRows((p, i, np.where(np.arange(len(v)) == 3, np.nan, v), d)), ValueError, "NaN"),
        "wrong width": (csr(X.shape[0], d + 1, 0.05), ValueError, "X: expected 200 features"),
        "int32 indptr": (CsrRows((p.astype(np.int32), i, v, d)), TypeError, "X.indptr"),
    }


@pytest.mark.parametrize("case", list(hostile_cases(csr(30, 200, 0.05))))
@pytest.mark.parametrize("call", ["fit", "train_step", "predict", "evaluate", "loss_and_grads"])
def test_hostile_sparse_input_is_refused_naming_X_and_changes_nothing(case, call):
    X = csr(30, 200, 0.05)
    Xbad, exc, match = hostile_cases(X)[case]
    y = np.zeros(30, dtype=np.int64)
    m = mlp(200)
    before = {k: v.copy() for k, v in m.parameters().items()}
    with pytest.raises(exc, match=match):
        if call == "fit":
            m.fit(Xbad, y, epochs=1, batch_size=8, progress=False)
        elif call == "predict":
            m.predict(Xbad)
        else:
            getattr(m, call)(Xbad, y)
    for k, v in m.parameters().items():
        assert np.array_equal(v, before[k])
    m.fit(X, y, epochs=1, progress=False)  # and the model still trains


def test_csr_rows_are_four_parts():
    p, i, v = arrays(csr(5, 10, 0.3))
    with pytest.raises(TypeError, match="X: a sparse input"):
        CsrRows((p, i, v))
    m = mlp(10)
    with pytest.raises(TypeError, match="X: a sparse input"):
        m._core.predict((p, i, v), 0)


def test_sparse_arrays_changed_by_another_thread_are_checked_where_read():
    X = csr(2048, 300, 0.02, seed=7)
    Xr = as_csr_rows(X, np.float64)
    y = np.random.default_rng(4).integers(0, 3, 2048)
    order = np.arange(2048, dtype=np.int64)
    m = mlp(300)
    stop = threading.Event()
    indices, indptr = Xr[1], Xr[0]

    def scribble():
        while not stop.is_set():
            indices[7] = 10**12
            indptr[9] = 10**12
            indices[7] = 1
            indptr[9] = indptr[8]

    t = threading.Thread(target=scribble)
    t.start()
    seen = set()
    try:
        for _ in range(200):
            try:
                m._core.train_epoch(Xr, y, order, 64, 0)
                seen.add("ok")
            except ValueError as e:
                assert str(e).startswith("X:")
                seen.add("ValueError")
    finally:
        stop.set()
        t.join()
    assert seen


def test_take_rows_equals_scipy_row_indexing():
    X = csr(50, 40, 0.2, seed=8)
    rows = np.array([3, 3, 0, 49, 17])
    got = take_rows(as_csr_rows(X, np.float64), rows)
    ref = X[rows]
    assert got.shape == ref.shape
    assert np.array_equal(sp.csr_matrix((got[2], got[1], got[0]), shape=got.shape).toarray(), ref.toarray())


# ------------------------------------------------------------------------------ scikit-learn
@pytest.mark.parametrize("solver,early_stopping", [("adam", False), ("adam", True), ("sgd", False),
                                                   ("sgd", True), ("lbfgs", False)])
def test_estimators_on_sparse_X_equal_the_dense_fit(solver, early_stopping):
    pytest.importorskip("sklearn")
    from layerprop.sklearn import MLPClassifier, MLPRegressor
    X = csr(300, 400, 0.03, seed=9)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    t = X @ rng.standard_normal(400)
    kw = dict(hidden_layer_sizes=(12,), solver=solver, random_state=0, max_iter=15, early_stopping=early_stopping)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cls, target, method in ((MLPClassifier, y, "predict_proba"), (MLPRegressor, t, "predict")):
            a = cls(**kw).fit(X.tocsc(), target)
            b = cls(**kw).fit(X.toarray(), target)
            assert a.n_iter_ == b.n_iter_
            np.testing.assert_allclose(a.loss_curve_ if solver != "lbfgs" else [a.loss_],
                                       b.loss_curve_ if solver != "lbfgs" else [b.loss_], rtol=1e-10)
            np.testing.assert_allclose(getattr(a, method)(X), getattr(b, method)(X.toarray()), atol=1e-10)


# SGD only: Adam places epsilon as PyTorch does, not as scikit-learn does (docs/sklearn.md).
@pytest.mark.parametrize("nesterov", [False, True])
def test_classifier_on_sparse_X_matches_scikit_learn_from_the_same_weights(nesterov):
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier as SkC
    from layerprop.sklearn import MLPClassifier
    X = csr(240, 500, 0.02, seed=10)
    y = np.random.default_rng(6).integers(0, 4, 240)
    kw = dict(hidden_layer_sizes=(10,), solver="sgd", random_state=0, max_iter=1, shuffle=False,
              batch_size=48, learning_rate_init=0.05, warm_start=True, nesterovs_momentum=nesterov)
    ours, theirs = MLPClassifier(**kw), SkC(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X, y)
        theirs.fit(X, y)
        for i in range(len(ours.coefs_)):
            theirs.coefs_[i][...] = ours.coefs_[i]
            theirs.intercepts_[i][...] = ours.intercepts_[i]
        ours.set_params(max_iter=5)
        theirs.set_params(max_iter=5)
        ours.fit(X, y)
        theirs.fit(X, y)
    np.testing.assert_allclose(ours.loss_curve_[1:], theirs.loss_curve_[1:], rtol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-9)


@pytest.mark.scale
def test_a_text_sized_sparse_problem_trains_without_densifying():
    # 60,000 rows x 20,000 features at 0.5% density: 6M non-zeros (96 MB as CSR); the dense
    # matrix would take 9.6 GB in float64.
    rng = np.random.default_rng(0)
    n, d, per_row = 60_000, 20_000, 100
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int64)
    indices = rng.integers(0, d, n * per_row).astype(np.int64)
    data = rng.random(n * per_row).astype(np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(n, d))
    w = rng.standard_normal(d).astype(np.float32)
    y = (X @ w > 0).astype(np.int64)
    m = lp.Sequential(lp.Linear(d, 32), lp.ReLU(), lp.Linear(32, 2), dtype="float32", seed=0)
    m.compile(loss="cross_entropy", optimizer=lp.Adam(1e-3))
    h = m.fit(X, y, epochs=2, batch_size=256, progress=False)
    assert h.history["loss"][1] < h.history["loss"][0] < 0.7
    assert m.evaluate(X, y)["accuracy"] > 0.75
