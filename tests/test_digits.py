"""Learning test: a 64-128-10 MLP learns scikit-learn's digits to >= 97% test accuracy."""

import numpy as np
import pytest

import layerprop as lp


def test_digits_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = model_selection.train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0
    )

    model = lp.Sequential(lp.Linear(64, 128), lp.ReLU(), lp.Linear(128, 10), seed=0)
    model.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3))
    history = model.fit(X_train, y_train, epochs=40, batch_size=32, shuffle=True, progress=False)
    result = model.evaluate(X_test, y_test)
    print(f"\ndigits test accuracy: {result['accuracy']:.4f} (loss {result['loss']:.4f})")

    assert len(history.history["loss"]) == 40
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert result["accuracy"] == pytest.approx(np.mean(model.predict(X_test).argmax(axis=1) == y_test))
    assert result["accuracy"] >= 0.97
