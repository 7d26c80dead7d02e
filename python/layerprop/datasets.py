"""Small built-in datasets for the command line, the benchmarks and the examples."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["load_digits", "digits_split"]


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
