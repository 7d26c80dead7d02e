"""A TF-IDF + MLP pipeline on sparse input: layerprop's estimator against scikit-learn's.

`python benchmarks/sparse.py [--rows N] [--features D] [--density P] [--reps R] [--dtype T]` builds a
text-like problem (default 10,000 documents x 20,000 terms at 1% density, rows l2-normalized as
TfidfVectorizer leaves them, 5 classes from a hidden linear rule), then times one epoch of
`fit` (max_iter=1, warm_start=True; scikit-learn's defaults otherwise: 100 ReLU units, Adam,
batch 200, alpha 1e-4) and `predict_proba` on the whole set, for layerprop.sklearn.MLPClassifier
and sklearn.neural_network.MLPClassifier, alternating, and prints the medians and their ratio.
Both are given the same scipy.sparse CSR matrix; neither densifies it.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def tfidf_like(rows: int = 10_000, features: int = 20_000, density: float = 0.01, classes: int = 5,
               seed: int = 0):
    """(X CSR float64 with l2-normalized rows, y) of a text-like classification problem."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    per_row = max(1, int(round(features * density)))
    indptr = np.arange(0, rows * per_row + 1, per_row, dtype=np.int64)
    # Term frequencies skewed like words (Zipf-like column popularity), values like tf-idf.
    popularity = 1.0 / np.arange(1, features + 1) ** 0.6
    popularity /= popularity.sum()
    indices = rng.choice(features, size=rows * per_row, p=popularity)
    data = rng.exponential(1.0, rows * per_row)
    X = sp.csr_matrix((data, indices, indptr), shape=(rows, features))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1))).ravel()
    X = sp.diags(1.0 / norms) @ X
    w = rng.standard_normal((features, classes))
    y = np.asarray((X @ w).argmax(axis=1)).ravel()
    return X.tocsr(), y


def epoch_and_predict(est, X, y):
    """(seconds for one fit epoch, seconds for predict_proba on X)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X, y)
        t1 = time.perf_counter()
    est.predict_proba(X)
    return t1 - t0, time.perf_counter() - t1


def estimators(max_iter: int = 1):
    from sklearn.neural_network import MLPClassifier as SkMLP
    from layerprop.sklearn import MLPClassifier as LpMLP
    kw = dict(hidden_layer_sizes=(100,), max_iter=max_iter, warm_start=True, random_state=0)
    return {"layerprop": LpMLP(**kw), "scikit-learn": SkMLP(**kw)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=20_000)
    ap.add_argument("--density", type=float, default=0.01)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                    help="X's dtype (TfidfVectorizer's default is float64; both estimators then train in it)")
    args = ap.parse_args()
    X, y = tfidf_like(args.rows, args.features, args.density)
    X = X.astype(args.dtype)
    ests = estimators()
    times = {k: ([], []) for k in ests}
    for k, est in ests.items():  # warm-up: builds the networks, first-touch of memory
        epoch_and_predict(est, X, y)
    for _ in range(args.reps):
        for k, est in ests.items():
            f, p = epoch_and_predict(est, X, y)
            times[k][0].append(f)
            times[k][1].append(p)
    import layerprop as lp
    print(f"TF-IDF-like: {X.shape[0]} x {X.shape[1]}, {X.nnz} non-zeros ({X.nnz / np.prod(X.shape):.2%}), "
          f"{args.dtype}, {lp.get_num_threads()} layerprop thread(s); medians of {args.reps}")
    print(f"{'':14s}{'fit epoch (s)':>15s}{'predict_proba (s)':>19s}{'train accuracy':>16s}")
    for k, est in ests.items():
        acc = float(np.mean(est.predict(X) == y))
        print(f"{k:14s}{np.median(times[k][0]):15.3f}{np.median(times[k][1]):19.3f}{acc:16.3f}")
    f = np.median(times["scikit-learn"][0]) / np.median(times["layerprop"][0])
    p = np.median(times["scikit-learn"][1]) / np.median(times["layerprop"][1])
    print(f"layerprop faster by: fit epoch {f:.2f}x, predict_proba {p:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
