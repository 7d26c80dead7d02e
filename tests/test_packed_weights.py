"""predict and evaluate keep a model's Linear weights packed between calls while the parameters
do not change (docs/threads.md, "Inference: packed weights"). The packed copy must never be used
after any write: through the core's updates, through views handed out by parameters() (held or
not, sliced, wrapped), through reset/clone/load, or by another thread during a call. Every check
compares with the same call with the packed copy turned off: the bits must be identical."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import layerprop as lp
from layerprop import _core

from conftest import LEAKY_SLOPE, build_mlp

# Batches of 200 rows: at 128 rows or more a call may keep the packed weights whatever the
# model's size, and every Linear here packs its weight on each call unless it was kept.
ROWS = 200
SIZES = (40, 64, 48, 10)


def fresh(dtype="float32", seed=0):
    model, _ = build_mlp(SIZES, "relu", dtype=dtype, seed=seed)
    model.compile("cross_entropy", lp.Adam(lr=1e-2))
    return model


def data(dtype="float32", rows=ROWS, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, SIZES[0])).astype(dtype), rng.integers(0, SIZES[-1], rows)


def unpacked(fn):
    _core._set_packed_weights(False)
    try:
        return fn()
    finally:
        _core._set_packed_weights(True)


def stats(model):
    return model._core.packed_stats()


def check(model, X, **kw):
    """predict with whatever is kept equals predict without it, bit for bit."""
    got = model.predict(X, **kw)
    want = unpacked(lambda: model.predict(X, **kw))
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kept_weights_give_the_same_bits_and_are_reused(dtype, threads):
    prev = lp.get_num_threads()
    lp.set_num_threads(threads)
    try:
        model = fresh(dtype)
        X, y = data(dtype, rows=700)
        first = check(model, X, batch_size=ROWS)  # 3 full batches and a short one
        assert stats(model)["builds"] == 1 and stats(model)["valid"]
        assert stats(model)["bytes"] > 0
        for _ in range(3):
            np.testing.assert_array_equal(check(model, X, batch_size=ROWS), first)
        assert stats(model)["builds"] == 1, "the kept weights were packed again without a write"
        assert stats(model)["uses"] >= 4
        ev = model.evaluate(X, y, batch_size=ROWS)
        assert ev == unpacked(lambda: model.evaluate(X, y, batch_size=ROWS))
        assert stats(model)["builds"] == 1
    finally:
        lp.set_num_threads(prev)


def test_training_invalidates_and_the_next_call_repacks():
    model = fresh()
    X, y = data()
    before = check(model, X)
    model.fit(X, y, epochs=1, batch_size=50, progress=False)
    assert not stats(model)["valid"]
    after = check(model, X)
    assert not np.array_equal(before, after)
    assert stats(model)["builds"] == 2 and stats(model)["valid"]
    model.train_step(X, y)
    check(model, X)
    model.compute_gradients(X, y)
    model.apply_gradients()
    check(model, X)
    assert stats(model)["builds"] == 4


def test_a_write_through_a_dropped_view_is_seen():
    model = fresh()
    X, _ = data()
    before = check(model, X)
    model.parameters()["0.weight"][...] *= 2  # the view is gone after this line
    after = check(model, X)
    assert not np.array_equal(before, after)


@pytest.mark.parametrize("hold", ["view", "slice", "memoryview", "asarray", "dict"])
def test_a_write_through_a_held_view_is_seen(hold):
    model = fresh()
    X, _ = data()
    check(model, X)
    params = model.parameters()
    w = params["0.weight"]
    holder = {"view": w, "slice": w[:, :5], "memoryview": memoryview(w), "asarray": np.asarray(w),
              "dict": params}[hold]
    del w, params
    for _ in range(2):
        check(model, X)  # held: nothing may be kept while a view is out
    assert not stats(model)["valid"]
    target = holder["0.weight"][:, :5] if hold == "dict" else holder
    np.asarray(target)[...] = 0.5
    seen = check(model, X)
    model2 = fresh()
    ref = model2.parameters()
    for k, v in model.parameters().items():
        ref[k][...] = v
    del ref
    np.testing.assert_array_equal(seen, model2.predict(X))


def test_torch_from_numpy_view_is_held():
    torch = pytest.importorskip("torch")
    model = fresh()
    X, _ = data()
    check(model, X)
    t = torch.from_numpy(model.parameters()["1.weight"] if "1.weight" in model.parameters()
                         else model.parameters()["2.weight"])
    check(model, X)
    assert not stats(model)["valid"]
    t.mul_(3)
    check(model, X)


def test_reset_clone_and_load_are_seen(tmp_path):
    model = fresh()
    X, y = data()
    check(model, X)
    model.reset_parameters(seed=7)
    check(model, X)
    twin = model.clone()
    np.testing.assert_array_equal(check(twin, X), check(model, X))
    model.fit(X, y, epochs=1, batch_size=50, progress=False)
    path = tmp_path / "m.lp"
    model.save(str(path))
    loaded = lp.io.load(str(path))
    np.testing.assert_array_equal(check(loaded, X), check(model, X))


def test_kept_weights_are_in_use_after_ordinary_work():
    """Nothing inside the library keeps a view of the parameters after compile, fit, evaluate,
    save and a gradient check: otherwise predict would never keep its packed weights."""
    model = fresh()
    X, y = data()
    model.fit(X, y, epochs=1, batch_size=50, progress=False)
    model.evaluate(X, y)
    model.optimizer_state()
    model.predict(X)
    model.predict(X)
    assert stats(model)["valid"] and stats(model)["builds"] == 1, stats(model)


def test_small_calls_use_but_do_not_build():
    """Calls under 128 rows and 2^22 multiply-adds (rows x parameters) do not pay for the view
    check: they never build, but use a copy a larger call kept."""
    model = fresh()
    X, _ = data()
    check(model, X[:100])
    assert stats(model)["builds"] == 0
    check(model, X)
    uses = stats(model)["uses"]
    check(model, X[:100])
    assert stats(model)["builds"] == 1 and stats(model)["uses"] > uses


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows,act", [(16, "relu"), (17, "leaky_relu"), (37, "relu"), (100, "tanh"),
                                      (131, "leaky_relu"), (300, "relu"), (300, "identity")])
def test_small_batches_of_a_large_model_keep_the_weights(rows, act, threads):
    """Under 128 rows a model with enough parameters still keeps its packed weights. The kept
    path reads x in place, 12 rows at a time (AVX-512), and applies bias and ReLU, LeakyReLU
    or Identity as it stores; the call without them computes C^T = W x^T (under 128 rows) or
    packs x, and applies the activation in a second pass: the bits must be the same."""
    prev = lp.get_num_threads()
    lp.set_num_threads(threads)
    try:
        model, ref_acts = build_mlp((800, 336, 24, 10), act, dtype="float32", seed=3)
        assert rows * sum(p.size for p in model.parameters().values()) >= 1 << 22
        X = np.random.default_rng(rows).standard_normal((rows, 800)).astype(np.float32)
        first = check(model, X)
        assert stats(model)["builds"] == 1 and stats(model)["valid"], stats(model)
        np.testing.assert_array_equal(check(model, X), first)
        assert stats(model)["builds"] == 1
        ps = [v.astype(np.float64) for v in model.parameters().values()]  # weight, bias per Linear
        h = X.astype(np.float64)
        fs = {"relu": lambda v: np.maximum(v, 0), "leaky_relu": lambda v: np.where(v > 0, v, LEAKY_SLOPE * v),
              "tanh": np.tanh, "identity": lambda v: v}
        for i, f in enumerate(ref_acts):
            h = h @ ps[2 * i].T + ps[2 * i + 1]
            h = h if f is None else fs[act](h)
        np.testing.assert_allclose(first, h, rtol=1e-4, atol=1e-4)
    finally:
        lp.set_num_threads(prev)


def test_switch_off_by_environment():
    code = ("import numpy as np, layerprop as lp\n"
            "m = lp.Sequential(lp.Linear(40, 64), lp.ReLU(), lp.Linear(64, 10))\n"
            "x = np.ones((300, 40), np.float32)\n"
            "m.predict(x); m.predict(x)\n"
            "print(m._core.packed_stats()['builds'])\n")
    env = dict(os.environ, LAYERPROP_PACKED_WEIGHTS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_writer_thread_during_predicts():
    """Another thread writes through parameters() while this one predicts: once it is done,
    predict must give what the final parameters give, whatever the interleaving was."""
    model = fresh()
    X, _ = data()
    stop = threading.Event()

    def writer():
        k = 0
        while not stop.is_set():
            k += 1
            model.parameters()["0.weight"][...] = np.float32(k % 7) * 0.01

    th = threading.Thread(target=writer)
    th.start()
    try:
        for _ in range(300):
            model.predict(X)
    finally:
        stop.set()
        th.join()
    check(model, X)


def test_random_sequences_of_writes_and_predicts():
    """A small fuzz: random operations, each predict compared with the unpacked one."""
    rng = np.random.default_rng(123)
    model = fresh()
    X, y = data()
    held = []
    for step in range(150):
        op = rng.integers(0, 8)
        if op == 0:
            model.train_step(X[:50], y[:50])
        elif op == 1:
            name = list(model.parameters())[rng.integers(0, 6)]
            model.parameters()[name][...] += np.float32(rng.standard_normal() * 0.01)
        elif op == 2:
            held.append(model.parameters()[list(model.parameters())[rng.integers(0, 6)]])
        elif op == 3 and held:
            held[rng.integers(0, len(held))][...] *= np.float32(0.9)
        elif op == 4 and held:
            held.pop(rng.integers(0, len(held)))
        else:
            rows = int(rng.choice([ROWS, 2 * ROWS + 3]))
            Xr = np.resize(X, (rows, X.shape[1]))
            check(model, Xr, batch_size=ROWS)
    assert stats(model)["builds"] > 1 and stats(model)["uses"] > stats(model)["builds"]


def test_random_shapes_keep_the_bits():
    """Random layer widths (ragged against the 12-row and 16-column tiles), activations, row
    counts and thread counts: predict with kept weights equals predict without, bit for bit."""
    rng = np.random.default_rng(7)
    prev = lp.get_num_threads()
    kept = 0
    try:
        for trial in range(40):
            sizes = [int(rng.integers(1, 700)) for _ in range(int(rng.integers(2, 4)))] + [int(rng.integers(1, 40))]
            acts = [lp.ReLU, lp.LeakyReLU, lp.Tanh, lp.Identity]
            layers = []
            for i in range(len(sizes) - 1):
                layers.append(lp.Linear(sizes[i], sizes[i + 1]))
                if i < len(sizes) - 2:
                    layers.append(acts[int(rng.integers(0, 4))]())
            model = lp.Sequential(*layers, dtype="float32", seed=trial)
            lp.set_num_threads(int(rng.integers(1, 3)))
            X = rng.standard_normal((int(rng.integers(1, 400)), sizes[0])).astype(np.float32)
            check(model, X)
            check(model, X)
            kept += stats(model)["builds"] > 0
    finally:
        lp.set_num_threads(prev)
    assert kept >= 30, kept  # most draws are large enough to keep their weights
