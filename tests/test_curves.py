"""layerprop.datasets.curves: the CURVES-style images follow their documented recipe."""
import numpy as np
import pytest

from layerprop.datasets import curves


def test_shape_range_and_determinism():
    X = curves(300, seed=3)
    assert X.shape == (300, 784) and X.dtype == np.float32
    assert X.min() >= 0 and X.max() <= 1
    assert np.array_equal(X, curves(300, seed=3))
    assert not np.array_equal(X, curves(300, seed=4))
    assert (X.max(axis=1) > 0.9).all()          # every image has a stroke through some pixel centre
    ink = (X > 0.5).mean(axis=1)
    assert 0.01 < ink.mean() < 0.2               # a thin curve, not a filled image
    assert curves(5, size=16).shape == (5, 256)
    assert curves(4, dtype=np.float64).dtype == np.float64


def test_each_image_is_the_recipes_stroke():
    # The recipe written out plainly for 3 images: control points, width, per-pixel distance.
    n, size, seed = 3, 12, 7
    rng = np.random.default_rng(seed)
    P = rng.uniform(0.1, 0.9, size=(n, 3, 2)) * size
    sigma = rng.uniform(0.6, 1.2, size=n)
    got = curves(n, seed=seed, size=size, dtype=np.float64)
    for i in range(n):
        img = np.zeros((size, size))
        for r in range(size):
            for c in range(size):
                best = np.inf
                for t in np.linspace(0, 1, 64):
                    b = (1 - t) ** 2 * P[i, 0] + 2 * t * (1 - t) * P[i, 1] + t ** 2 * P[i, 2]
                    best = min(best, (r + 0.5 - b[0]) ** 2 + (c + 0.5 - b[1]) ** 2)
                img[r, c] = np.exp(-best / (2 * sigma[i] ** 2))
        np.testing.assert_allclose(got[i], img.ravel(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=True), dict(size=0), dict(seed=-1), dict(seed=1.5)])
def test_bad_arguments_are_refused_by_name(bad):
    name = next(iter(bad))
    with pytest.raises((TypeError, ValueError), match=name):
        curves(**{"n": 2, **bad})
