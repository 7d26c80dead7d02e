"""Small built-in datasets for the command line, the benchmarks and the examples."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["load_digits", "digits_split", "curves"]


def load_digits(dtype: Any = np.float64) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits: 1797 images as rows of 64 pixels scaled to [0, 1] (in
    `dtype`) and their int64 labels; None when scikit-learn is not installed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        return None
    d = sk_load_digits()
    return (d.data / 16.0).astype(dtype), d.target.astype(np.int64)


def digits_split(seed: int, dtype: Any = np.float32) -> Optional[Tuple[np.ndarray, ...]]:
    """The digits in a stratified 75/25 split (X_train, X_test, y_train, y_test), or None
    without scikit-learn."""
    data = load_digits(dtype)
    if data is None:
        return None
    from sklearn.model_selection import train_test_split
    X, y = data
    return tuple(train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed))


def curves(n: int = 20000, seed: int = 0, size: int = 28, dtype: Any = np.float32) -> np.ndarray:
    """A CURVES-style set (the deep-autoencoder benchmark of Hinton & Salakhutdinov, 2006, used
    by the LocoProp paper), made here from a documented recipe: n images of size x size pixels,
    as rows of size*size values in [0, 1], each one smooth curve drawn as a soft stroke.

    Recipe, per image (NumPy's default_rng(seed), in this order): three control points P0, P1,
    P2 uniform in [0.1, 0.9]^2 of the unit square; the quadratic Bezier curve
    B(t) = (1-t)^2 P0 + 2 t (1-t) P1 + t^2 P2 sampled at 64 evenly spaced t; a stroke width
    sigma uniform in [0.6, 1.2] pixels; each pixel (at its centre) takes
    exp(-d^2 / (2 sigma^2)), d its distance in pixels to the nearest sample of the curve.
    The same (n, seed, size) always give the same array."""
    from . import validation as V
    n = V.positive_int(n, "n")
    size = V.positive_int(size, "size")
    seed = V.integer(seed, "seed", 0, 2 ** 63 - 1)
    rng = np.random.default_rng(seed)
    P = rng.uniform(0.1, 0.9, size=(n, 3, 2)) * size            # control points, in pixels
    sigma = rng.uniform(0.6, 1.2, size=n)
    t = np.linspace(0.0, 1.0, 64)[:, None]
    centres = (np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).reshape(-1, 2) + 0.5)
    c2 = (centres ** 2).sum(-1)[None, :, None]
    out = np.empty((n, size * size), dtype=dtype)
    for a in range(0, n, 128):                                   # chunks: bounded memory
        b = min(n, a + 128)
        p0, p1, p2 = P[a:b, 0, None], P[a:b, 1, None], P[a:b, 2, None]
        pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2           # (m, 64, 2)
        # |c - p|^2 = |c|^2 - 2 c.p + |p|^2 for every pixel centre c and curve sample p
        d2 = c2 - 2 * np.einsum("ck,mtk->mct", centres, pts) + (pts ** 2).sum(-1)[:, None, :]
        out[a:b] = np.exp(-np.maximum(d2.min(-1), 0.0) / (2 * sigma[a:b, None] ** 2))
    return out
