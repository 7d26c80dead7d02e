"""The element-wise kernels (activations forward and backward, the GEMM epilogue, bias
gradients) against NumPy, and the AVX2 build against the portable build, bit for bit."""
import textwrap

import numpy as np
import pytest

import reference as ref
from layerprop import _core
from simd_builds import outputs_of_both_builds  # noqa: E402

ACTS = {"identity": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4, "gelu": 5}
SLOPE = 0.1


def _data(dtype, rows=5, cols=37, seed=0):
    """Values around zero, with exact zeros of both signs; 37 columns leave a vector tail."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 3).astype(dtype)
    special = [0.0, -0.0, 1e-30, -1e-30][:cols]
    x[0, :len(special)] = special
    return x


def _tol(dtype):
    return 2e-6 if dtype == np.float32 else 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(ACTS))
def test_activation_forward_and_backward_match_numpy(name, dtype):
    x = _data(dtype)
    y = _core._eltwise("forward", x, None, ACTS[name], SLOPE)
    assert y.dtype == dtype and y.shape == x.shape
    spec = (name, SLOPE) if name == "leaky_relu" else name
    np.testing.assert_allclose(y, ref.activation(spec, x), rtol=_tol(dtype), atol=_tol(dtype))
    dy = _data(dtype, seed=1)
    dx = _core._eltwise("backward", x, (dy, y), ACTS[name], SLOPE)
    want = dy.astype(np.float64) * ref.activation_grad(spec, x)
    np.testing.assert_allclose(dx, want, rtol=4 * _tol(dtype), atol=4 * _tol(dtype))
    if name in ("identity", "relu", "leaky_relu"):  # one rounding or none: exact
        s = dtype(SLOPE)
        f = {"identity": x, "relu": np.where(x < 0, dtype(0), x), "leaky_relu": np.where(x > 0, x, x * s)}[name]
        d = {"identity": dy, "relu": dy * (x > 0).astype(dtype), "leaky_relu": dy * np.where(x > 0, dtype(1), s)}[name]
        assert np.array_equal(y, f)
        assert np.array_equal(dx, d)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [19, 32])  # a tail, and whole vectors (the AVX2 tile path)
@pytest.mark.parametrize("name", ["identity", "relu", "leaky_relu", "tanh"])
def test_bias_activation_epilogue(name, cols, dtype):
    x = _data(dtype, rows=7, cols=cols)
    x[1, :3] = [np.nan, np.inf, -np.inf]
    bias = _data(dtype, rows=1, cols=cols, seed=2)[0]
    z, a = _core._eltwise("bias_act", x, bias, ACTS[name], SLOPE)
    assert np.array_equal(z, x + bias, equal_nan=True)  # one rounding, as NumPy's
    assert np.array_equal(a, _core._eltwise("forward", z, None, ACTS[name], SLOPE), equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (32, 10), (9, 131)])
def test_colsum_sums_rows_in_order(shape, dtype):
    x = _data(dtype, *shape)
    acc = np.zeros(shape[1], dtype)
    for row in x:
        acc = acc + row
    assert np.array_equal(_core._eltwise("colsum", x), acc)


def test_eltwise_rejects_bad_arguments():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="act"):
        _core._eltwise("forward", x, None, 99, 0.0)
    with pytest.raises(ValueError, match="op"):
        _core._eltwise("sideways", x)
    with pytest.raises(TypeError, match="x"):
        _core._eltwise("forward", x.astype(np.int32))
    with pytest.raises(ValueError, match="bias"):
        _core._eltwise("bias_act", x, np.zeros(2, np.float32))


_ALL_OUTPUTS = textwrap.dedent("""
    import numpy as np, sys
    from layerprop import _core
    out = {}
    rng = np.random.default_rng(3)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal((6, 45)) * 3).astype(dt)
        x[0, :5] = [0.0, -0.0, np.nan, np.inf, -np.inf]
        dy = rng.standard_normal((6, 45)).astype(dt)
        bias = rng.standard_normal(45).astype(dt)
        for a in range(6):
            y = _core._eltwise("forward", x, None, a, 0.1)
            out[f"f{a}{dt.__name__}"] = y
            out[f"b{a}{dt.__name__}"] = _core._eltwise("backward", x, (dy, y), a, 0.1)
            z, act = _core._eltwise("bias_act", x, bias, a, 0.1)
            out[f"e{a}{dt.__name__}"] = act
            z, act = _core._eltwise("bias_act", np.ascontiguousarray(x[:, :40]), bias[:40], a, 0.1)
            out[f"v{a}{dt.__name__}"] = act
        out[f"c{dt.__name__}"] = _core._eltwise("colsum", x)
    np.savez(sys.argv[1], **out)
""")


def test_avx2_and_portable_builds_agree_bit_for_bit(tmp_path):
    """Every element-wise kernel gives the same bits in the AVX2 and the portable build,
    NaN, infinities and signed zeros included (no FMA contraction in either)."""
    import layerprop as lp
    if lp.build_info()["simd"] != "avx2+fma":
        pytest.skip("no AVX2 build on this CPU: only the portable kernels exist")
    a, b = outputs_of_both_builds(tmp_path, _ALL_OUTPUTS)
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 50
    for k in a.files:
        assert a[k].tobytes() == b[k].tobytes(), k


_CROSS_ENTROPY = r"""
import sys
import numpy as np
import layerprop as lp
out = {}
for dt in ("float32", "float64"):
    for C, N in ((10, 32), (3, 200), (1000, 70), (2, 5), (17, 129)):
        # logits = X exactly (identity weight, zero bias: every product term is exact), so both
        # builds see the same logits; the bias gradient is the loss's gradient, column-summed.
        m = lp.Sequential(lp.Linear(C, C), seed=0, dtype=dt)
        m.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.0))
        m.parameters()["0.weight"][:] = np.eye(C)
        m.parameters()["0.bias"][:] = 0
        rng = np.random.default_rng(C)
        X = (rng.standard_normal((N, C)) * 30).astype(dt)   # logits far apart too: zeros, subnormals
        y = rng.integers(0, C, N)
        loss, g = m.loss_and_grads(X, y)
        out[f"{dt}{C}l"] = np.array(loss)
        out[f"{dt}{C}b"] = g["0.bias"]
        out[f"{dt}{C}x"] = np.array(m.evaluate(X, y)["loss"])
np.savez(sys.argv[1], **out)
"""


def test_cross_entropy_same_bits_in_both_builds(tmp_path):
    """The cross-entropy's exponentials run as a vector kernel (exp_nonpos in the element-wise
    builds): on the same logits, the AVX2 and the portable build give the same loss and
    gradient, bit for bit."""
    a, b = outputs_of_both_builds(tmp_path, _CROSS_ENTROPY)
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 30
    for k in a.files:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_finite_scan_finds_every_position_at_every_length():
    """The NaN/Inf scan (AVX-512: 64 values a step, then a masked tail) finds one bad value at
    any position of arrays of 1 to 140 floats, and passes arrays with none (largest finite
    values, subnormals and signed zeros included)."""
    import layerprop as lp
    m = lp.Sequential(lp.Linear(1, 1), seed=0)
    rng = np.random.default_rng(0)
    for n in range(1, 141):
        X = rng.standard_normal((n, 1)).astype(np.float32)
        X[::7] = np.float32(3.4028235e38)
        X[1::11] = np.float32(1e-45)
        X[2::13] = np.float32(-0.0)
        m.predict(X)  # nothing bad: no error
        for pos in {0, n // 2, n - 1, min(n - 1, 63), min(n - 1, 64)}:
            for bad in (np.nan, np.inf, -np.inf):
                Y = X.copy()
                Y[pos, 0] = bad
                with pytest.raises(ValueError, match="X"):
                    m.predict(Y)
