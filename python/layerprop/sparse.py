"""Sparse input: scipy.sparse matrices (CSR, CSC, COO, ... and the sparse arrays) as X.

A sparse X is converted once per call to CSR with int64 indices and the model's dtype
(float64 values for a float32 model are converted, as dense data is), and crosses into the
core as its three arrays. The first Linear layer then computes its forward product and its
weight gradient from the non-zeros (cost nnz x out, not rows x in x out); nothing densifies X
or a batch. Only when the input also feeds something other than a Linear layer (an
activation, Dropout, a norm layer, Add or Concat straight on the input) is each batch
densified, in the model's own scratch.
"""
from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np


def is_sparse(X: Any) -> bool:
    """True for a scipy.sparse matrix or array (without importing SciPy when it is not loaded:
    a sparse object cannot exist without it)."""
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and bool(sp.issparse(X))


class CsrRows(tuple):
    """(indptr, indices, data, n_columns) of a CSR matrix, as the core reads it; .shape is the
    matrix's (rows, columns), so code that only needs the row count treats it like an array."""

    def __new__(cls, parts: Any) -> "CsrRows":
        parts = tuple(parts)
        if len(parts) != 4:
            raise TypeError("X: a sparse input is (indptr, indices, data, n_columns)")
        return super().__new__(cls, parts)

    @property
    def shape(self) -> Tuple[int, int]:
        return (len(self[0]) - 1, int(self[3]))

    @property
    def ndim(self) -> int:
        return 2


def as_csr_rows(X: Any, dtype: Any, name: str = "X") -> CsrRows:
    """X (any scipy.sparse format) as CsrRows of `dtype` (np.float32 or np.float64). float64
    values for a float32 model are converted; other dtypes are refused, as for dense input."""
    dtype = np.dtype(dtype)
    if isinstance(X, CsrRows):
        if X[2].dtype == dtype:
            return X
        return as_csr_rows(_scipy_csr(X), dtype, name)
    if len(X.shape) != 2:
        raise ValueError(f"{name}: expected a 2-D sparse matrix (samples, features), got shape {X.shape}")
    Xc = X.tocsr()
    data = Xc.data
    if data.dtype != dtype:
        if dtype == np.float32 and data.dtype == np.float64:
            data = data.astype(np.float32)
        else:
            raise TypeError(f"{name}: expected dtype {dtype.name}"
                            + (" (or float64, converted once)" if dtype == np.float32 else "")
                            + f", got sparse data of dtype {data.dtype}")
    indptr = np.ascontiguousarray(Xc.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(Xc.indices, dtype=np.int64)
    return CsrRows((indptr, indices, np.ascontiguousarray(data), int(Xc.shape[1])))


def _scipy_csr(X: CsrRows) -> Any:
    from scipy.sparse import csr_matrix
    return csr_matrix((X[2], X[1], X[0]), shape=X.shape)


def dense(X: Any) -> Any:
    """A dense array of CsrRows (small data only: the float64 twins of lp.explain); other X as is."""
    return _scipy_csr(X).toarray() if isinstance(X, CsrRows) else X


def prepare(X: Any, dtype: Any, name: str = "X") -> Any:
    """X as the core reads it: CsrRows for sparse input, else a C-contiguous array of dtype."""
    if isinstance(X, CsrRows) or is_sparse(X):
        return as_csr_rows(X, dtype, name)
    return np.ascontiguousarray(X, dtype=dtype)


def take_rows(X: Any, rows: np.ndarray) -> Any:
    """Rows of a dense array or of CsrRows (a new CsrRows)."""
    if not isinstance(X, CsrRows):
        return X[rows]
    indptr, indices, data, cols = X
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    new_ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_ptr[1:])
    pos = np.repeat(starts - new_ptr[:-1], lengths) + np.arange(new_ptr[-1], dtype=np.int64)
    return CsrRows((new_ptr, indices[pos], data[pos], cols))
