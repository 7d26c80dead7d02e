"""Regression tests of the hardened core: each defect found (label over-read, check-then-use
races, fork after OpenMP, sizes, refused calls that changed the model, torn checkpoints, 0-d
labels) and the non-finite guard. The hostile-file cases are in test_io_hostile.py, the fuzzing
in test_fuzz.py, the MNIST-sized and multi-million-row runs in test_scale.py."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import layerprop as lp


def mlp(loss="cross_entropy", dtype="float32", opt=None, sizes=(8, 16, 3), bn=False, seed=0, schedule=None):
    layers = [lp.Linear(sizes[0], sizes[1])]
    if bn:
        layers.append(lp.BatchNorm1d(sizes[1]))
    layers += [lp.ReLU(), lp.Linear(sizes[1], sizes[2])]
    m = lp.Sequential(*layers, dtype=dtype, seed=seed)
    m.compile(loss=loss, optimizer=opt or lp.Adam(lr=1e-2), schedule=schedule)
    return m


def data(n=40, d=8, c=3, loss="cross_entropy", dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, c, n) if loss == "cross_entropy" else rng.random((n, c)).astype(dtype)
    return X, y


def state(m):
    """Everything a refused call must leave alone, as copies."""
    snap = m._core.snapshot()
    return {"params": snap["params"], "buffers": snap["buffers"], "s0": snap["state0"],
            "s1": snap["state1"], "steps": snap["steps"], "rng": snap["rng"],
            "shuffle": repr(m._fit_rng.bit_generator.state)}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].tobytes() == b[k].tobytes(), k
        else:
            assert a[k] == b[k], k


# ------------------------------------------------------------------ 1. label / target over-read
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
def test_fit_and_evaluate_read_only_the_labels_given(loss, dtype):
    # The core used to read labels *and* targets through a pointer into an empty default array
    # for every row: ASan flagged it at 20 rows, and large fits crashed. Now each batch is
    # exactly a twin of its rows trained one step at a time.
    X, y = data(n=50, loss=loss, dtype=np.dtype(dtype).type)
    a, b = mlp(loss, dtype), mlp(loss, dtype)
    a.fit(X, y, epochs=2, batch_size=16, shuffle=False, progress=False)
    for _ in range(2):
        for s in range(0, 50, 16):
            b.train_step(X[s:s + 16], y[s:s + 16])
    for k, v in a.parameters().items():
        assert np.array_equal(v, b.parameters()[k]), k
    ev = a.evaluate(X, y, batch_size=7)
    assert np.isfinite(ev["loss"])


def test_the_reported_mnist_sized_fit_trains():
    # The reproducer (it crashed from about 20,000 rows).
    rng = np.random.default_rng(0)
    X = rng.random((60000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60000)
    m = lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=0)
    m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3))
    h = m.fit(X, y, epochs=1, batch_size=128, progress=False)
    assert np.isfinite(h.history["loss"][0])
    assert 0.0 <= m.evaluate(X, y)["accuracy"] <= 1.0


# ------------------------------------------------------------------ 2. check-then-use races
def test_labels_refilled_by_another_thread_are_checked_where_read():
    # A data loader refilling the label buffer while the core trains: the core copies and
    # checks labels under its lock, so a bad label is refused and never indexes memory.
    X, y = data(n=4096, d=8, c=3)
    y = y.astype(np.int64)
    m = mlp()
    stop = threading.Event()

    def refill():
        bad = np.full_like(y, 10**12)
        good = y.copy()
        while not stop.is_set():
            y[:] = bad
            y[:] = good

    t = threading.Thread(target=refill)
    t.start()
    outcomes = set()
    try:
        for _ in range(200):
            try:
                m._core.train_epoch(X, y, np.arange(4096, dtype=np.int64), 64, 0)
                m.train_step(X[:64], y[:64])
                outcomes.add("ok")
            except ValueError as e:
                assert "y: class label" in str(e)
                outcomes.add("refused")
    finally:
        stop.set()
        t.join()
    assert outcomes <= {"ok", "refused"}
    assert all(np.isfinite(v).all() for v in m.parameters().values())


def test_compile_from_another_thread_never_runs_a_kernel_on_missing_labels():
    X, yc = data(n=256, d=8, c=3)
    yt = np.random.default_rng(1).random((256, 3)).astype(np.float32)
    m = mlp()
    stop = threading.Event()

    def recompile():
        while not stop.is_set():
            m.compile(loss="mse", optimizer=lp.SGD(lr=0.01))
            m.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.01))

    t = threading.Thread(target=recompile)
    t.start()
    seen = set()
    try:
        for _ in range(300):
            for yy in (yc, yt):
                try:
                    m._core.train_step(X, yy)
                    seen.add("ok")
                except (TypeError, ValueError, RuntimeError) as e:
                    seen.add(type(e).__name__)
    finally:
        stop.set()
        t.join()
    assert "ok" in seen
    assert seen <= {"ok", "TypeError", "ValueError", "RuntimeError"}


def test_row_order_changed_by_another_thread_is_checked_where_read():
    X, y = data(n=2048)
    order = np.arange(2048, dtype=np.int64)
    m = mlp()
    stop = threading.Event()

    def scribble():
        while not stop.is_set():
            order[5] = 10**15
            order[5] = 5

    t = threading.Thread(target=scribble)
    t.start()
    try:
        for _ in range(200):
            try:
                m._core.train_epoch(X, y, order, 32, 0)
            except ValueError as e:
                assert "order: row index" in str(e)
    finally:
        stop.set()
        t.join()


def test_many_threads_may_predict_one_model():
    X, _ = data(n=3000, d=8)
    m = mlp()
    ref = m.predict(X, batch_size=97)
    out = [None] * 6

    def run(i):
        for _ in range(20):
            out[i] = m.predict(X, batch_size=97)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for o in out:
        assert np.array_equal(o, ref)


def test_training_calls_from_two_threads_serialize():
    # Two threads training one model: the steps serialize (the model's lock), so the result
    # is that of some order of whole steps: the step count is exact.
    X, y = data(n=64)
    m = mlp(opt=lp.Adam(lr=1e-3))

    def run():
        for _ in range(50):
            m.train_step(X, y)

    ts = [threading.Thread(target=run) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert set(m._core.steps()) == {100}


# ------------------------------------------------------------------ 3. fork after OpenMP
def _child(q, X, y):
    from layerprop import _core
    m = mlp(sizes=(784, 512, 10))
    loss = m.train_step(X, y)
    q.put((float(loss), lp.get_num_threads(), _core.forked_after_pool()))


@pytest.mark.skipif(not lp.build_info()["openmp"], reason="needs an OpenMP build")
def test_fork_after_a_threaded_step_leaves_a_usable_child():
    prev = lp.get_num_threads()
    lp.set_num_threads(2)
    try:
        if lp.get_num_threads() < 2:
            pytest.skip("OpenMP limited to 1 thread here")
        X, y = data(n=256, d=784, c=10)
        m = mlp(sizes=(784, 512, 10))
        lp._core._set_foreign_probe(False)  # the step must use the pool, whatever else runs
        try:
            m.train_step(X, y)  # GEMMs of 256x512x784: a parallel region in this process
        finally:
            lp._core._set_foreign_probe(os.environ.get("LAYERPROP_FOREIGN_PROBE") != "0")
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(q, X, y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (Python 3.12+)
            p.start()
        p.join(120)
        if p.is_alive():
            p.kill()
            pytest.fail("the forked child hung in its first training step")
        assert p.exitcode == 0
        loss, threads, forked = q.get(timeout=5)
        assert np.isfinite(loss) and threads == 1 and forked
        # The parent keeps its threads.
        assert lp.get_num_threads() == 2 and not lp._core.forked_after_pool()
    finally:
        lp.set_num_threads(prev)


# ------------------------------------------------------------------ 5. refused calls change nothing
def test_fit_refuses_nan_in_validation_data_before_any_step():
    X, y = data()
    Xv, yv = data(n=10, seed=1)
    Xv[3, 2] = np.nan
    m = mlp()
    before = state(m)
    with pytest.raises(ValueError, match="validation_data: X: contains NaN or Inf"):
        m.fit(X, y, epochs=3, validation_data=(Xv, yv), progress=False)
    assert_same(before, state(m))


def test_fit_refuses_bad_validation_labels_before_any_step():
    X, y = data()
    Xv, yv = data(n=10, seed=1)
    yv[0] = 7
    m = mlp()
    before = state(m)
    with pytest.raises(ValueError, match=r"validation_data: y: class label 7 at row 0"):
        m.fit(X, y, epochs=3, validation_data=(Xv, yv), progress=False)
    assert_same(before, state(m))


def test_early_stopping_on_val_loss_without_validation_data_changes_nothing():
    X, y = data()
    m = mlp()
    before = state(m)
    with pytest.raises(ValueError, match="monitor: EarlyStopping"):
        m.fit(X, y, epochs=3, callbacks=[lp.EarlyStopping(monitor="val_loss")], progress=False)
    assert_same(before, state(m))


def test_fit_checks_its_data_even_when_no_epoch_runs():
    X, y = data()
    X[0, 0] = np.inf
    m = mlp()
    with pytest.raises(ValueError, match="X: contains NaN or Inf"):
        m.fit(X, y, epochs=2, initial_epoch=2, progress=False)
    with pytest.raises(ValueError, match="X: contains NaN or Inf"):
        m.fit(X, y, epochs=0, progress=False)


def test_zero_dimensional_labels_are_refused_by_name():
    X, _ = data(n=1)
    m = mlp()
    with pytest.raises(ValueError, match="^y: "):
        m.fit(X, np.array(1), progress=False)
    with pytest.raises(ValueError, match="^y: "):
        m.train_step(X, np.array(1))
    with pytest.raises(ValueError, match="^y: "):
        lp.explain.gradcheck(lp.Sequential(lp.Linear(8, 3), dtype="float64").compile(loss="cross_entropy"),
                             X.astype(np.float64), np.array(1))


# ------------------------------------------------------------------ 6. sizes
def test_scratch_follows_the_rows_present_not_batch_size():
    # batch_size=10**6 on 100 rows of 784 features used to allocate 3 GB of scratch.
    code = (
        "import resource, numpy as np, layerprop as lp\n"
        "m = lp.Sequential(lp.Linear(784, 16), lp.ReLU(), lp.Linear(16, 3), seed=0)\n"
        "m.compile(loss='cross_entropy')\n"
        "X = np.random.rand(100, 784).astype(np.float32); y = np.arange(100) % 3\n"
        "m.fit(X, y, epochs=1, batch_size=10**6, progress=False)\n"
        "m.fit(X, y, epochs=1, batch_size=2**62 + 1, progress=False)\n"
        "m.predict(X, batch_size=2**62); m.evaluate(X, y, batch_size=2**62)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 1_000_000  # KiB: under 1 GB peak for the whole process


def test_a_model_too_large_for_memory_is_refused_before_allocating():
    with pytest.raises(MemoryError, match=r"layer 0 \(4294967296 -> 4294967296 features\): size .* overflows"):
        lp.Sequential(lp.Linear(2**32, 2**32))
    with pytest.raises(MemoryError, match=r"the largest, layer 1, is 1048576 -> 1048576 features\): needs \d+ bytes"):
        lp.Sequential(lp.Linear(4, 2**20), lp.ReLU(), lp.Linear(2**20, 2**20))


def test_a_batch_too_large_for_memory_is_refused_before_allocating():
    m = lp.Sequential(lp.Linear(1, 2**24), lp.ReLU(), lp.Linear(2**24, 1), seed=0)
    m.compile(loss="mse")
    # 2**16 rows x 2**24 features x 4 bytes x several buffers: far beyond this machine.
    X = np.zeros((2**16, 1), np.float32)
    with pytest.raises(MemoryError, match=r"X: a batch of \d+ rows \(workspace\): needs \d+ bytes"):
        m.predict(X)


# ------------------------------------------------------------------ 7. torn checkpoints
def test_save_during_fit_in_another_thread_writes_consistent_files(tmp_path):
    # Every tensor of one checkpoint must come from the same step: the step counts of all
    # tensors agree. Before save took one snapshot under the model's lock, a save racing a fit
    # mixed steps (a wide model, batch 1: many tensors, many steps).
    from layerprop.io import model_to_state
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 8)).astype(np.float32)
    y = rng.integers(0, 3, 4000)
    layers = [lp.Linear(8, 8)]
    for _ in range(12):
        layers += [lp.ReLU(), lp.Linear(8, 8)]
    m = lp.Sequential(*layers, lp.ReLU(), lp.Linear(8, 3), seed=0)
    m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-4))
    done = threading.Event()

    def train():
        try:
            m.fit(X, y, epochs=3, batch_size=1, progress=False)
        finally:
            done.set()

    t = threading.Thread(target=train)
    t.start()
    torn = checked = 0
    try:
        while not done.is_set():
            tensors, _meta = model_to_state(m)
            checked += 1
            torn += len(set(tensors["optimizer.steps"].tolist())) != 1
    finally:
        t.join()
    assert checked > 10
    assert torn == 0, f"{torn} of {checked} snapshots mixed step counts"
    pytest.importorskip("safetensors")
    m.save(tmp_path / "c.safetensors")
    assert len(set(lp.load(tmp_path / "c.safetensors")._core.steps())) == 1


# ------------------------------------------------------------------ the non-finite guard
def blow_up(m):
    """Make the next forward overflow: float32 weights of 3e38 (their products are inf)."""
    w = m.parameters()["0.weight"]
    w[0, :] = 3e38


@pytest.mark.parametrize("schedule", [None, lp.Layerwise(), lp.LocoProp(variant="S", inner_steps=2)])
@pytest.mark.parametrize("bn", [False, True])
def test_a_non_finite_step_is_not_applied(schedule, bn):
    X, y = data(n=32)
    m = mlp(bn=bn, schedule=schedule)
    m.train_step(X, y)  # optimizer state and statistics are not trivial
    blow_up(m)
    before = state(m)
    with pytest.raises(lp.NonFiniteError, match="not applied"):
        m.train_step(X, y)
    assert_same(before, state(m))


def test_fit_raises_at_the_first_non_finite_step_and_keeps_the_last_good_model():
    X, y = data(n=64)
    m = mlp()
    blow_up(m)
    before = state(m)
    with pytest.raises(lp.NonFiniteError, match=r"epoch 1, batch 1 of 4"):
        m.fit(X, y, epochs=3, batch_size=16, shuffle=False, progress=False)
    assert_same(before, state(m))


def test_fit_on_a_huge_learning_rate_stops_with_finite_parameters():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 8)).astype(np.float32)
    Y = rng.standard_normal((256, 3)).astype(np.float32)
    m = mlp(loss="mse", opt=lp.SGD(lr=1e6))
    with pytest.raises(lp.NonFiniteError):
        m.fit(X, Y, epochs=50, batch_size=16, progress=False)
    assert all(np.isfinite(v).all() for v in m.parameters().values())
    assert np.isfinite(m.predict(X)).all() or True  # outputs may overflow; parameters may not


def test_on_nonfinite_skip_and_stop():
    X, y = data(n=64)
    X[16:32] = 3e38  # the second batch overflows the forward (positive weights: no cancelling)
    m = mlp()
    m.parameters()["0.weight"][...] = 0.5
    h = m.fit(X, y, epochs=2, batch_size=16, shuffle=False, progress=False, on_nonfinite="skip")
    assert h.history["nonfinite_batches"] == [1.0, 1.0]
    assert np.isfinite(h.history["loss"]).all()
    assert set(m._core.steps()) == {6}  # 3 applied steps per epoch
    m2 = mlp()
    m2.parameters()["0.weight"][...] = 0.5
    with pytest.warns(RuntimeWarning, match="on_nonfinite='stop'"):
        h2 = m2.fit(X, y, epochs=3, batch_size=16, shuffle=False, progress=False, on_nonfinite="stop")
    assert len(h2.history["loss"]) == 1
    assert set(m2._core.steps()) == {1}
    with pytest.raises(ValueError, match="on_nonfinite"):
        m2.fit(X, y, on_nonfinite="ignore")


def test_compute_gradients_on_a_non_finite_batch_leaves_nothing_to_apply():
    X, y = data(n=32)
    X = np.abs(X) + 1  # positive rows: 3e38 weights overflow every pre-activation
    m = mlp(bn=True)
    blow_up(m)
    before = state(m)
    loss = m.compute_gradients(X, y)
    assert not np.isfinite(loss)
    assert_same(before, state(m))  # running statistics put back
    with pytest.raises(lp.NonFiniteError, match="apply_gradients"):
        m.apply_gradients()
    assert_same(before, state(m))


def test_nan_weights_give_nan_outputs_through_relu():
    # ReLU passes NaN through, as PyTorch's does: a NaN model never predicts finite numbers.
    m = lp.Sequential(lp.Linear(3, 2), lp.ReLU(), lp.Linear(2, 1), seed=0)
    m.parameters()["0.weight"][...] = np.nan
    assert np.isnan(m.predict(np.ones((40, 3), np.float32))).all()
    X = np.ones((16, 3), np.float32)
    for n in (1, 16):  # the direct and the packed GEMM paths, each with its epilogue
        assert np.isnan(m.predict(X[:n], batch_size=n)).all()


def test_nan_logits_are_never_correct_and_never_the_best_epoch():
    X, y = data(n=60)
    m = mlp()
    for v in m.parameters().values():
        v[...] = np.nan
    assert m.evaluate(X, y)["accuracy"] == 0.0
    es = lp.EarlyStopping(monitor="val_loss", patience=0, restore_best_weights=True)
    es.set_model(m)
    es.on_train_begin()
    es.on_epoch_end(0, {"val_loss": float("nan")})
    assert es.best_epoch is None and m.stop_training


def test_set_num_threads_in_a_forked_child_warns():
    code = (
        "import os, sys, warnings, numpy as np, layerprop as lp\n"
        "lp.set_num_threads(2)\n"
        "if lp.get_num_threads() < 2: print('skip'); sys.exit(0)\n"
        "m = lp.Sequential(lp.Linear(784, 512), lp.ReLU(), lp.Linear(512, 10), seed=0); m.compile()\n"
        "X = np.random.rand(256, 784).astype(np.float32); y = np.arange(256) % 10\n"
        "m.train_step(X, y)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        lp.set_num_threads(2)\n"
        "    ok = len(w) == 1 and 'single-threaded' in str(w[0].message) and lp.get_num_threads() == 1\n"
        "    m.train_step(X, y)\n"
        "    os._exit(0 if ok else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n")
    # The first step must start the pool. Right after NumPy's import, OpenBLAS's new worker may
    # still be spinning, and the probe's scan of runnable threads would rightly leave it that core.
    env = dict(os.environ, OMP_NUM_THREADS="2", LAYERPROP_RUNNABLE_SCAN="0")
    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "skip":
        pytest.skip("OpenMP limited to 1 thread here")
    assert out.stdout.split()[-1] == "0"


def test_sklearn_estimator_on_a_diverging_solver_raises_like_scikit_learn():
    pytest.importorskip("sklearn")
    from layerprop.sklearn import MLPRegressor
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = X @ rng.standard_normal(5)
    m = MLPRegressor(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=1e6, max_iter=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning is not what this test is about
        with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
            m.fit(X, y)
    assert all(np.isfinite(w).all() for w in m.coefs_)  # the last good parameters


def test_fit_shuffle_permutation_is_uniform_and_reproducible():
    """fit's shuffle (the core's Fisher-Yates from one 64-bit draw of the model's shuffling
    generator): a permutation, the same for the same seed, and uniform: the 24 orders of 4
    rows over 24,000 seeds pass a chi-square test (23 degrees of freedom, p > 0.001)."""
    from itertools import permutations
    from layerprop import _core
    p = _core._permutation(1797, 7)
    assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(1797))
    assert np.array_equal(p, _core._permutation(1797, 7)) and not np.array_equal(p, _core._permutation(1797, 8))
    assert _core._permutation(0, 1).shape == (0,) and _core._permutation(1, 1).tolist() == [0]
    index = {q: i for i, q in enumerate(permutations(range(4)))}
    counts = np.zeros(24)
    for s in range(24000):
        counts[index[tuple(_core._permutation(4, s * 2654435761).tolist())]] += 1
    chi2 = float(((counts - 1000.0) ** 2 / 1000.0).sum())
    assert chi2 < 49.7, chi2   # the 0.999 quantile of chi-square with 23 degrees of freedom
    with pytest.raises(ValueError, match="n"):
        _core._permutation(-1, 0)
    # fit's order comes from the model's seed: two models with one seed shuffle alike
    import layerprop as lp
    a, b = (lp.Sequential(lp.Linear(3, 2), seed=5) for _ in range(2))
    assert np.array_equal(a._shuffled_order(100), b._shuffled_order(100))
