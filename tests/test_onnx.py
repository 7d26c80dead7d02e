"""model.to_onnx: the exported file, run by onnxruntime, gives predict's outputs (float32
rounding) for every layer kind, graphs with add/concat/shared weights, and the estimators."""
from __future__ import annotations

import numpy as np
import pytest

import layerprop as lp

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run(path, X):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": X})[0]


def trained(model, loss="cross_entropy", n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, model.in_features)).astype(model._np_dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, model.out_features, n)
    else:
        y = rng.standard_normal((n, model.out_features)).astype(model._np_dtype)
    model.compile(loss=loss, optimizer=lp.Adam(lr=1e-2))
    for _ in range(5):
        model.train_step(X, y)  # BatchNorm running statistics move away from 0/1
    return X


ACTS = [lp.ReLU(), lp.LeakyReLU(0.2), lp.Tanh(), lp.Sigmoid(), lp.GELU(), lp.Identity()]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: type(a).__name__)
def test_every_activation_and_layer_kind(tmp_path, act):
    import copy
    m = lp.Sequential(lp.Linear(10, 16), lp.BatchNorm1d(16), copy.deepcopy(act), lp.Dropout(0.3),
                      lp.Linear(16, 12), lp.LayerNorm(12), copy.deepcopy(act), lp.Linear(12, 4, bias=False),
                      seed=1)
    X = trained(m)
    m.to_onnx(tmp_path / "m.onnx")
    got = run(tmp_path / "m.onnx", X)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, m.predict(X), rtol=1e-5, atol=1e-5)


def test_a_graph_with_skips_concat_and_a_shared_weight(tmp_path):
    x = lp.Input(8)
    h = lp.ReLU()(lp.Linear(8, 8, name="a")(x))
    s = lp.add(h, x)
    shared = lp.Linear(8, 8, name="shared")
    u = shared(lp.Tanh()(shared(s)))
    c = lp.concat([u, h, x])
    m = lp.Model(inputs=x, outputs=lp.Linear(24, 3, name="out")(c), seed=0)
    X = trained(m)
    m.to_onnx(tmp_path / "g.onnx")
    import onnx
    proto = onnx.load(str(tmp_path / "g.onnx"))
    assert [i.name for i in proto.graph.initializer].count("shared.weight") == 1
    np.testing.assert_allclose(run(tmp_path / "g.onnx", X), m.predict(X), rtol=1e-5, atol=1e-5)


def test_float64_models_export_in_float64(tmp_path):
    m = lp.Sequential(lp.Linear(5, 7), lp.ReLU(), lp.Linear(7, 2), dtype="float64", seed=0)
    X = trained(m, loss="mse")
    m.to_onnx(tmp_path / "d.onnx")
    got = run(tmp_path / "d.onnx", X)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, m.predict(X), rtol=1e-12, atol=1e-12)


def test_batch_one_and_large_batches(tmp_path):
    m = lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=0)
    m.to_onnx(tmp_path / "s.onnx")
    X = np.random.default_rng(0).random((1000, 784), dtype=np.float32)
    for n in (1, 7, 1000):
        np.testing.assert_allclose(run(tmp_path / "s.onnx", X[:n]), m.predict(X[:n]), rtol=1e-4, atol=1e-5)


def test_estimators_export_their_predictions(tmp_path):
    pytest.importorskip("sklearn")
    from layerprop.sklearn import MLPClassifier, MLPRegressor
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 4)).astype(np.float32)
    for y in (np.arange(90) % 3, np.arange(90) % 2):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0)
        with pytest.warns(Warning):
            clf.fit(X, y)
        clf.to_onnx(tmp_path / "c.onnx")
        np.testing.assert_allclose(run(tmp_path / "c.onnx", X), clf.predict_proba(X), rtol=1e-5, atol=1e-6)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=30, random_state=0)
    with pytest.warns(Warning):
        reg.fit(X, X[:, :2] @ np.ones((2, 2), np.float32))
    reg.to_onnx(tmp_path / "r.onnx")
    np.testing.assert_allclose(run(tmp_path / "r.onnx", X), reg.predict(X), rtol=1e-5, atol=1e-6)


def test_refusals():
    with pytest.raises(TypeError, match="model: expected an lp.Model"):
        from layerprop.export import model_proto
        model_proto(object())


def test_poisson_regressor_exports_its_rates(tmp_path):
    pytest.importorskip("sklearn")
    from layerprop.sklearn import MLPRegressor
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3)).astype(np.float32)
    y = rng.poisson(np.exp(0.3 * X[:, 0])).astype(np.float32)
    reg = MLPRegressor(loss="poisson", hidden_layer_sizes=(6,), max_iter=20, random_state=0)
    with pytest.warns(Warning):
        reg.fit(X, y)
    reg.to_onnx(tmp_path / "p.onnx")
    np.testing.assert_allclose(run(tmp_path / "p.onnx", X)[:, 0], reg.predict(X), rtol=1e-5)
