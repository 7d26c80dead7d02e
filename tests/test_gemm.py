"""The packed GEMM kernel and its naive twin against NumPy float64 on awkward shapes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import rel_err

from layerprop import _core

TOL = {np.float32: 1e-5, np.float64: 1e-12}
KERNELS = {"packed": "_gemm", "naive": "_gemm_naive"}

# (M, K, N) of op(a) (M,K) @ op(b) (K,N): ones, primes, non-multiples of 6 and 16,
# K > 256 and M > 240 (more than one cache block), and tiny-times-large.
SHAPES = [
    (1, 1, 1),
    (1, 7, 1),
    (7, 1, 13),
    (13, 97, 7),
    (6, 16, 16),
    (5, 17, 15),
    (97, 13, 257),
    (257, 97, 1),
    (1, 300, 257),
    (241, 257, 33),
    (250, 300, 130),
]


def operands(rng, m, k, n, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
    return a, b, want


def check(kernel, rng, m, k, n, trans_a, trans_b, dtype):
    a, b, want = operands(rng, m, k, n, trans_a, trans_b, dtype)
    got = getattr(_core, KERNELS[kernel])(a, b, trans_a, trans_b)
    assert got.shape == (m, n)
    assert got.dtype == dtype
    err = rel_err(got, want)
    assert err <= TOL[dtype], f"{kernel} {dtype.__name__} {m}x{k}x{n} ta={trans_a} tb={trans_b}: {err:.2e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_gemm_matches_numpy(kernel, shape, trans_a, trans_b, dtype, rng):
    check(kernel, rng, *shape, trans_a, trans_b, dtype)


@settings(max_examples=60, deadline=None, database=None)
@given(
    kernel=st.sampled_from(list(KERNELS)),
    m=st.integers(1, 70),
    k=st.integers(1, 70),
    n=st.integers(1, 70),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_random_shapes(kernel, m, k, n, trans_a, trans_b, dtype, seed):
    check(kernel, np.random.default_rng(seed), m, k, n, trans_a, trans_b, dtype)


# The direct (unpacked) path's shapes: outer products (K = 1, a batch of 1's weight gradient)
# with 64-column register blocks and tails, rows with 8-column tails, dots with K tails.
DIRECT_SHAPES = [(64, 1, 64), (64, 1, 16), (3, 1, 130), (64, 1, 9), (1, 64, 64), (1, 64, 45),
                 (4, 33, 21), (1, 16, 64), (2, 3, 70)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("shape", DIRECT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_direct_path_with_and_without_accumulate(shape, trans_a, trans_b, dtype, rng):
    """Both forms the model uses: C = op(A) op(B), and C += op(A) op(B) (gradient fan-in)."""
    m, k, n = shape
    assert _core._gemm_uses_direct(m, n, k)
    a, b, want = operands(rng, m, k, n, trans_a, trans_b, dtype)
    got = _core._gemm(a, b, trans_a, trans_b)
    assert rel_err(got, want) <= TOL[dtype]
    c0 = rng.standard_normal((m, n)).astype(dtype)
    got_acc = _core._gemm(a, b, trans_a, trans_b, c=c0)
    assert rel_err(got_acc, want + c0.astype(np.float64)) <= TOL[dtype]
    packed_acc = _core._gemm_naive(a, b, trans_a, trans_b, c=c0)
    assert rel_err(got_acc, packed_acc.astype(np.float64)) <= 2 * TOL[dtype]
    with pytest.raises(ValueError, match="c: expected shape"):
        _core._gemm(a, b, trans_a, trans_b, c=np.zeros((m, n + 1), dtype))


def test_identity_and_zero_products_are_exact():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 41))
    eye = np.eye(41)
    for name in KERNELS.values():
        fn = getattr(_core, name)
        assert np.array_equal(fn(a, eye, False, False), a)
        assert np.array_equal(fn(eye, a, False, True), a.T)
        assert np.array_equal(fn(np.zeros((5, 41)), a, False, True), np.zeros((5, 37)))


def test_portable_fallback_kernels_agree():
    """LAYERPROP_SIMD=scalar selects the portable micro-kernel at import: same results."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import numpy as np, layerprop as lp
        from layerprop import _core
        assert lp.build_info()["simd"] == "scalar", lp.build_info()
        rng = np.random.default_rng(0)
        worst = {}
        for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
            for m, n, k in ((1, 1, 1), (7, 13, 5), (97, 257, 300), (250, 33, 517)):
                for ta in (False, True):
                    for tb in (False, True):
                        a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
                        b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
                        ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                        err = np.abs(_core._gemm(a, b, ta, tb) - ref).max() / np.abs(ref).max()
                        assert err < tol, (dt, m, n, k, ta, tb, err)
        print("ok")
    """)
    env = dict(__import__("os").environ, LAYERPROP_SIMD="scalar")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
