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


def test_kernel_choices_give_the_same_bits():
    """The kernel choices made at import must not change a bit (every output is the same fma
    chain over k, in the same order): x @ W^T with few rows runs as C^T = W x^T, W read in place
    (swap_nt; LAYERPROP_GEMM_SWAP_ROWS=0 turns it off), small products with B not transposed
    read their operands in place (LAYERPROP_GEMM_INPLACE=0 packs them), and on CPUs with AVX-512F two 6-row
    micro-panels run at once in a 12 x 16 kernel, and a row block's last 1-11 rows in one kernel
    of that many rows (LAYERPROP_SIMD=avx2 turns both off). Checked:
    products of every transposition, plain and accumulating, a Linear + ReLU forward with its
    bias epilogue, and training steps at 1 and 2 threads."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, numpy as np, layerprop as lp
        from layerprop import _core
        rng = np.random.default_rng(0)
        out = {}
        for m, n, k in ((1, 300, 200), (5, 40, 130), (16, 512, 784), (31, 70, 300), (32, 128, 784),
                        (90, 1000, 129), (96, 97, 256), (13, 600, 1000), (128, 512, 784), (125, 130, 200)):
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((n, k), dtype=np.float32)
            c = rng.standard_normal((m, n), dtype=np.float32)
            g = out[f"g{m}_{n}_{k}"] = _core._gemm(a, b, False, True)
            out[f"c{m}_{n}_{k}"] = _core._gemm(a, b, False, True, c=c)
            ref = a.astype(np.float64) @ b.astype(np.float64).T
            assert np.abs(g - ref).max() <= 1e-5 * np.abs(ref).max(), (m, n, k)
        # 13..24 rows: every remainder of a 12-row tile (the AVX-512 tail kernel's 1..11 rows)
        for m, n, k in ((12, 16, 40), (250, 33, 517), (200, 100, 300), (130, 70, 257), (512, 96, 700),
                        *((m, 40, 50) for m in range(13, 25))):
            for ta in (False, True):
                for tb in (False, True):
                    a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
                    b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
                    c = rng.standard_normal((m, n), dtype=np.float32)
                    out[f"q{m}_{n}_{k}_{ta}_{tb}"] = _core._gemm(a, b, ta, tb)
                    out[f"r{m}_{n}_{k}_{ta}_{tb}"] = _core._gemm(a, b, ta, tb, c=c)
        for sizes in ((784, 512, 512, 10), (300, 200, 7)):
            model = lp.Sequential(lp.Linear(sizes[0], sizes[1]), lp.ReLU(), lp.Linear(sizes[1], sizes[2]), seed=1)
            for bsz in (1, 7, 16, 64, 96, 128, 200):
                out[f"p{sizes[0]}_{bsz}"] = model.predict(rng.standard_normal((bsz, sizes[0]), dtype=np.float32))
        for nt in (1, 2):
            lp.set_num_threads(nt)
            model = lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=2)
            model.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3))
            X = rng.standard_normal((32 * 6, 784), dtype=np.float32)
            y = rng.integers(0, 10, 32 * 6)
            model.fit(X, y, epochs=1, batch_size=32, shuffle=False, progress=False)
            for name, v in model.parameters().items():
                out[f"t{nt}{name}"] = np.array(v)
        np.savez(sys.argv[1], **out)
        print(lp.build_info()["gemm_avx512"])
    """)
    import tempfile
    import layerprop as lp
    has_avx512 = lp.build_info()["cpu"]["avx512f"] and lp.build_info()["simd"] == "avx2+fma"
    with tempfile.TemporaryDirectory() as d:
        variants = {"default": {}, "no swap": {"LAYERPROP_GEMM_SWAP_ROWS": "0"},
                    "no in place": {"LAYERPROP_GEMM_INPLACE": "0"},
                    "avx2": {"LAYERPROP_SIMD": "avx2"},
                    "avx2, no swap": {"LAYERPROP_SIMD": "avx2", "LAYERPROP_GEMM_SWAP_ROWS": "0"}}
        results = {}
        for name, extra in variants.items():
            env = {k: v for k, v in os.environ.items()
                   if k not in ("LAYERPROP_GEMM_SWAP_ROWS", "LAYERPROP_SIMD", "LAYERPROP_GEMM_INPLACE")}
            env.update(extra)
            path = os.path.join(d, name.replace(", ", "_").replace(" ", "_") + ".npz")
            r = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            # the variant ran the kernels it names
            assert r.stdout.split()[-1] == str(has_avx512 and "avx2" not in name), (name, r.stdout)
            results[name] = np.load(path)
        base = results["default"]
        for name, other in results.items():
            assert sorted(other.files) == sorted(base.files)
            differ = [k for k in base.files if not np.array_equal(base[k], other[k])]
            assert not differ, (name, differ)


def test_small_products_in_place_give_the_packed_bits():
    """Small products (K <= 128, at most 2^18 multiply-adds, one thread) read A where it is on
    AVX-512 CPUs, and B too unless it is transposed (then only B's panels are packed); the
    packed path must give the same bits, plain and accumulating, at every row and column
    remainder, with strided operands."""
    from layerprop import _core
    rng = np.random.default_rng(3)
    shapes = [(64, 64, 32), (32, 64, 64), (64, 16, 32), (1, 300, 7), (12, 16, 64), (25, 33, 1),
              (100, 47, 40), (37, 129, 63), (13, 17, 64), (11, 200, 20), (128, 64, 32), (32, 64, 16),
              (32, 10, 128), (64, 16, 128), (128, 16, 128), (16, 128, 128), (20, 30, 100)]
    shapes += [(m, n, 9) for m in range(1, 14) for n in (15, 16, 17, 31)]
    try:
        for m, n, k in shapes:
            for ta in (False, True):
                for tb in (False, True):
                    a_full = rng.standard_normal(((k, m + 3) if ta else (m, k + 3)), dtype=np.float32)
                    a = a_full[:, :m] if ta else a_full[:, :k]          # strided rows
                    b_full = rng.standard_normal(((n, k + 2) if tb else (k, n + 5)), dtype=np.float32)
                    b = b_full[:, :k] if tb else b_full[:, :n]
                    c = rng.standard_normal((m, n), dtype=np.float32)
                    got = {}
                    for on in (True, False):
                        _core._set_gemm_inplace(on)
                        got[on] = (_core._gemm(a, b, ta, tb, None), _core._gemm(a, b, ta, tb, c.copy()))
                    for x, y in zip(got[True], got[False]):
                        assert x.tobytes() == y.tobytes(), (m, n, k, ta, tb)
                    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                    assert np.abs(got[True][0] - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), (m, n, k, ta, tb)
                    assert np.abs(got[True][1] - (ref + c)).max() <= 1e-5 * max(1.0, np.abs(ref + c).max())
    finally:
        _core._set_gemm_inplace(True)


def test_threaded_products_share_panels_to_the_same_bits():
    """At 2 threads a product's rectangles share their packed panels of A and B (each block
    packed once, by whichever rectangle needs it first). Shared, each rectangle packing its
    own, or each packing a private copy of the blocks it reads (the path taken when a block's
    packer is away): the same bits as at 1 thread, plain and accumulating, every transposition,
    several depth blocks, row and column remainders, strided operands, float32 and float64, and
    a product whose panels exceed the shared buffer's cap (each rectangle packs its own)."""
    import layerprop as lp
    from layerprop import _core
    rng = np.random.default_rng(11)
    threads = lp.get_num_threads()
    jobs = _core._pool_stats()["jobs"]
    shapes = [(96, 97, 256), (256, 512, 784), (200, 300, 600), (513, 130, 257), (37, 700, 300),
              (96, 200, 300), (130, 64, 1000), (24, 4100, 2100)]
    try:
        for dtype in (np.float32, np.float64):
            for m, n, k in shapes:
                if dtype == np.float64 and m * n * k > 1e8:
                    continue
                for ta in (False, True):
                    for tb in (False, True):
                        if m * n * k > 1e8 and (ta, tb) != (False, True):
                            continue
                        a_full = rng.standard_normal(((k, m + 3) if ta else (m, k + 3))).astype(dtype)
                        a = a_full[:, :m] if ta else a_full[:, :k]
                        b_full = rng.standard_normal(((n, k + 2) if tb else (k, n + 5))).astype(dtype)
                        b = b_full[:, :k] if tb else b_full[:, :n]
                        c = rng.standard_normal((m, n)).astype(dtype)
                        got = {}
                        # Which thread packs which block first varies from call to call: the
                        # shared path runs several times.
                        for nt, mode, rep in ((1, 1, 0), *((2, 1, r) for r in range(4)), (2, 0, 0), (2, 2, 0)):
                            lp.set_num_threads(nt)
                            _core._set_gemm_shared(mode)
                            got[nt, mode, rep] = (_core._gemm(a, b, ta, tb, None), _core._gemm(a, b, ta, tb, c.copy()))
                        for key, (x, y) in got.items():
                            assert x.tobytes() == got[1, 1, 0][0].tobytes(), (m, n, k, ta, tb, key)
                            assert y.tobytes() == got[1, 1, 0][1].tobytes(), (m, n, k, ta, tb, key)
                        ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                        tol = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(ref).max()
                        assert np.abs(got[2, 1, 0][0] - ref).max() <= tol, (m, n, k, ta, tb)
                        assert np.abs(got[2, 1, 0][1] - (ref + c)).max() <= tol + 1e-5 * np.abs(c).max()
    finally:
        _core._set_gemm_shared(1)
        lp.set_num_threads(threads)
    # The pool may run a product's rectangles on the calling thread alone (another process
    # busy); over these products its workers did take part.
    assert _core._pool_stats()["jobs"] > jobs + 10
    with pytest.raises(ValueError, match="mode"):
        _core._set_gemm_shared(3)


def test_a_outer_products_give_the_same_bits():
    """Packed products with A not transposed keep A's 12-row tiles outside, read in place, while
    B's panels stream past (where A's rows spread over L1's sets; 4 KB strides fall back). On or
    off: the same bits, plain and accumulating, NN and NT, row and column remainders, strides
    of A that spread and that alias (1024 and 2048 floats), at 1 and 2 threads; and an MLP
    trains and predicts to the same bits."""
    import layerprop as lp
    from layerprop import _core
    rng = np.random.default_rng(12)
    threads = lp.get_num_threads()
    shapes = [(256, 512, 784), (37, 700, 300), (131, 130, 257), (300, 2100, 600), (12, 64, 1000)]
    try:
        for nt in (1, 2):
            lp.set_num_threads(nt)
            for m, n, k in shapes:
                for lda in (k, k + 5, 1024, 2048):
                    if lda < k:
                        continue
                    for tb in (False, True):
                        a = rng.standard_normal((m, lda)).astype(np.float32)[:, :k]
                        b_full = rng.standard_normal(((n, k + 2) if tb else (k, n + 5))).astype(np.float32)
                        b = b_full[:, :k] if tb else b_full[:, :n]
                        c = rng.standard_normal((m, n)).astype(np.float32)
                        got = []
                        for on in (True, False):
                            _core._set_gemm_a_outer(on)
                            got.append((_core._gemm(a, b, False, tb, None), _core._gemm(a, b, False, tb, c.copy())))
                        assert got[0][0].tobytes() == got[1][0].tobytes(), (nt, m, n, k, lda, tb)
                        assert got[0][1].tobytes() == got[1][1].tobytes(), (nt, m, n, k, lda, tb)
                        ref = a.astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                        assert np.abs(got[0][0] - ref).max() <= 1e-5 * np.abs(ref).max(), (nt, m, n, k, lda, tb)

        def run():
            model = lp.Sequential(lp.Linear(300, 200), lp.ReLU(), lp.Linear(200, 150), lp.LeakyReLU(0.1),
                                  lp.Linear(150, 10), seed=2)
            model.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3))
            X = np.random.default_rng(3).standard_normal((700, 300)).astype(np.float32)
            y = np.random.default_rng(4).integers(0, 10, 700)
            out = [np.float64(model.train_step(X[i:i + 140], y[i:i + 140])) for i in range(0, 700, 140)]
            out += [model.predict(X), model.predict(X[:50])]
            return out + [np.array(v) for v in model.parameters().values()]

        for nt in (1, 2):
            lp.set_num_threads(nt)
            _core._set_gemm_a_outer(True)
            on = run()
            _core._set_gemm_a_outer(False)
            off = run()
            for x, y in zip(on, off):
                assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    finally:
        _core._set_gemm_a_outer(True)
        lp.set_num_threads(threads)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_small_layers_in_place_train_and_predict_to_the_same_bits(act, bias):
    """A small MLP (every product in place, the forward's bias and ReLU / LeakyReLU fused into
    the stores, Tanh applied after, the bias gradient summed in the weight gradient's pass)
    trains and predicts to the same bits as with every product packed: outputs, losses,
    parameters after five steps at batch 32 and at batch 7, and the gradients of a batch."""
    import layerprop as lp
    from layerprop import _core
    acts = {"relu": lp.ReLU, "leaky_relu": lambda: lp.LeakyReLU(0.2), "tanh": lp.Tanh, "none": None}

    def run():
        layers = []
        for a, b in ((16, 64), (64, 48), (48, 5)):
            layers.append(lp.Linear(a, b, bias=bias))
            if acts[act] is not None and b != 5:
                layers.append(acts[act]())
        model = lp.Sequential(*layers, seed=4)
        model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.05, momentum=0.9))
        rng = np.random.default_rng(9)
        out = []
        for n in (32, 7):
            X = rng.standard_normal((n * 5, 16), dtype=np.float32)
            y = rng.integers(0, 5, n * 5)
            for s in range(5):
                out.append(np.float64(model.train_step(X[s * n:(s + 1) * n], y[s * n:(s + 1) * n])))
            out.append(model.predict(X[:n]))
        out += [np.array(v) for v in model.parameters().values()]
        _, grads = model.loss_and_grads(X[:32], y[:32])   # weight and bias gradients of one batch
        out += [np.array(grads[k]) for k in sorted(grads)]
        return out

    lp.set_num_threads(1)
    try:
        _core._set_gemm_inplace(True)
        a = run()
        _core._set_gemm_inplace(False)
        b = run()
    finally:
        _core._set_gemm_inplace(True)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_shared_weight_gradients_in_place_accumulate_both_uses():
    """A float32 Linear (16 x 16, batch 32: its products run in place) used twice: its weight
    and bias gradients sum both uses -- the second use adds to the first, the bias gradient in
    the weight gradient's pass -- and match two separate equal Linears, with the in-place path
    on or off (the same bits either way)."""
    import layerprop as lp
    from layerprop import _core

    def models():
        x = lp.Input(16)
        s = lp.Linear(16, 16, name="s")
        shared = lp.Model(inputs=x, outputs=lp.Linear(16, 4, name="o")(lp.Tanh()(s(lp.Tanh()(s(x))))), seed=1)
        x2 = lp.Input(16)
        split = lp.Model(inputs=x2, outputs=lp.Linear(16, 4, name="o")(lp.Tanh()(lp.Linear(16, 16, name="s2")(
            lp.Tanh()(lp.Linear(16, 16, name="s1")(x2))))), seed=1)
        sp = split.parameters()
        for kind in ("weight", "bias"):
            sp[f"s1.{kind}"][...] = shared.parameters()[f"s.{kind}"]
            sp[f"s2.{kind}"][...] = shared.parameters()[f"s.{kind}"]
            sp[f"o.{kind}"][...] = shared.parameters()[f"o.{kind}"]
        for m in (shared, split):
            m.compile(loss="mse")
        return shared, split

    rng = np.random.default_rng(2)
    X = rng.standard_normal((32, 16), dtype=np.float32)
    Y = rng.standard_normal((32, 4), dtype=np.float32)
    lp.set_num_threads(1)
    got = {}
    try:
        for on in (True, False):
            _core._set_gemm_inplace(on)
            shared, split = models()
            _, g1 = shared.loss_and_grads(X, Y)
            _, g2 = split.loss_and_grads(X, Y)
            got[on] = g1
            for kind in ("weight", "bias"):
                want = g2[f"s1.{kind}"].astype(np.float64) + g2[f"s2.{kind}"]
                assert np.abs(g1[f"s.{kind}"] - want).max() <= 1e-5 * np.abs(want).max(), (on, kind)
                assert not np.allclose(g1[f"s.{kind}"], g2[f"s2.{kind}"])  # both uses count
    finally:
        _core._set_gemm_inplace(True)
    for k in got[True]:
        assert got[True][k].tobytes() == got[False][k].tobytes(), k
