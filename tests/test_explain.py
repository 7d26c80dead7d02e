"""lp.explain: gradcheck, path_gradients, taylor_check, moving_target, and `layerprop explain`."""

import math
import zlib

import numpy as np
import pytest

import layerprop as lp
from conftest import ACTIVATIONS, LOSSES, assert_close, lp_activation, make_batch

PATH_TOL = 1e-10


def compiled(model, loss="mse", optimizer=None):
    return model.compile(loss=loss, optimizer=optimizer or lp.SGD(lr=0.1))


def residual_shared(dtype="float64", seed=0, act=lp.Tanh):
    """x -> shared -> act -> (+ x) -> shared -> act -> head: the `layerprop explain` network."""
    x = lp.Input(2)
    shared = lp.Linear(2, 2, name="shared")
    s = lp.add(x, act()(shared(x)))
    out = lp.Linear(2, 1, name="head")(act()(shared(s)))
    return lp.Model(inputs=x, outputs=out, dtype=dtype, seed=seed)


def random_graph(rng, dtype="float64"):
    """A small random DAG around a shared Linear `shared` (w -> w, used at least twice): fresh
    Linears (some without bias), every activation, more uses of `shared`, add and concat of
    earlier tensors (skip connections); widths 1..4 (concats up to 8)."""
    acts = [lp.ReLU, lp.Tanh, lp.Sigmoid, lp.GELU, lambda: lp.LeakyReLU(0.2), lp.Identity]

    def act():
        return acts[int(rng.integers(len(acts)))]()

    def fresh_linear(src, width):
        return lp.Linear(src.width, width, bias=bool(rng.integers(0, 2)))(src)

    x = lp.Input(int(rng.integers(1, 4)))
    w = int(rng.integers(1, 4))
    h0 = act()(fresh_linear(x, w))
    shared = lp.Linear(w, w, bias=bool(rng.integers(0, 2)), name="shared")
    pool = [x, h0, shared(h0)]
    for _ in range(int(rng.integers(2, 6))):
        src = pool[int(rng.integers(len(pool)))]
        op = ["linear", "shared", "act", "add", "concat"][int(rng.integers(5))]
        if src.width > 4:
            op = "linear"
        if op == "shared":
            t = shared(act()(src)) if src.width == w else shared(fresh_linear(src, w))
        elif op == "linear":
            t = fresh_linear(src, int(rng.integers(1, 4)))
        elif op == "act":
            t = act()(src)
        elif op == "add":
            other = pool[int(rng.integers(len(pool)))]
            if other.width != src.width:
                other = fresh_linear(other, src.width)
            t = lp.add(src, other)
        else:
            t = lp.concat([src, pool[int(rng.integers(len(pool)))]])
        pool.append(t)
    # One more use of `shared` on a skip connection of two width-w tensors, and an output that
    # reads it together with the last tensor and an earlier one.
    wide = [t for t in pool if t.width == w]
    last_use = shared(act()(lp.add(pool[2], wide[int(rng.integers(len(wide)))])))
    early = pool[int(rng.integers(len(pool)))]
    c = lp.concat([last_use, pool[-1], early])
    out = lp.Linear(c.width, int(rng.integers(1, 3)), name="out")(lp.Tanh()(c))
    return lp.Model(inputs=x, outputs=out, dtype=dtype, seed=int(rng.integers(2**31)))


def snapshot(model):
    return ({k: v.copy() for k, v in model.parameters().items()},
            {k: v.copy() for k, v in model.gradients().items()}, model.training)


def assert_unchanged(model, snap):
    params, grads, training = snap
    for k, v in model.parameters().items():
        assert v.tobytes() == params[k].tobytes(), f"parameter {k} changed"
    for k, v in model.gradients().items():
        assert v.tobytes() == grads[k].tobytes(), f"gradient {k} changed"
    assert model.training == training


def test_explain_is_a_submodule():
    assert "explain" in lp.__all__
    for name in ("gradcheck", "path_gradients", "taylor_check", "moving_target"):
        assert callable(getattr(lp.explain, name))


# ------------------------------------------------------------------ path_gradients


@pytest.mark.parametrize("seed", range(16))
def test_path_sum_equals_backprop_on_random_graphs(seed):
    rng = np.random.default_rng(zlib.crc32(f"random-graph-{seed}".encode()))
    model = random_graph(rng)
    loss = LOSSES[seed % 3]
    compiled(model, loss)
    X, y = make_batch(rng, 3, model.in_features, model.out_features, loss)
    _, grads = model.loss_and_grads(X, y)
    snap = snapshot(model)
    for name, p in model.parameters().items():
        for flat in rng.choice(p.size, size=min(2, p.size), replace=False):
            index = np.unravel_index(int(flat), p.shape)
            rep = lp.explain.path_gradients(model, X, y, name, index, max_paths=100_000)
            assert rep.backprop == grads[name][index]
            assert rep.path_sum == pytest.approx(sum(q.value for q in rep.paths), rel=1e-12, abs=1e-300)
            scale = max(float(np.max(np.abs(grads[name]))), 1e-300)
            assert abs(rep.path_sum - rep.backprop) <= PATH_TOL * scale, (name, index, str(rep))
            assert len(rep.paths) >= 1
            for q in rep.paths:
                assert q.nodes[0].startswith(f"{name}[") and q.nodes[-1] == "loss"
                assert q.factors.shape == (len(q.nodes) - 1, 3)
                assert q.value == pytest.approx(float(np.sum(np.prod(q.factors, axis=0))), rel=1e-14, abs=1e-300)
    assert_unchanged(model, snap)


def test_paths_of_a_shared_weight_in_a_residual_block():
    """shared.weight[0, 1] enters at both uses of `shared`; through the first use the skip
    connection's add fans out to both units of the second use: 2 + 1 paths."""
    model = compiled(residual_shared(seed=3))
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((4, 2)), rng.standard_normal((4, 1))
    rep = lp.explain.path_gradients(model, X, y, "shared.weight", (0, 1))
    assert [p.nodes for p in rep.paths] == [
        ("shared.weight[0, 1]", "shared(1)[0]", "tanh0[0]", "add0[0]", "shared(2)[0]", "tanh1[0]", "head[0]", "loss"),
        ("shared.weight[0, 1]", "shared(1)[0]", "tanh0[0]", "add0[0]", "shared(2)[1]", "tanh1[1]", "head[0]", "loss"),
        ("shared.weight[0, 1]", "shared(2)[0]", "tanh1[0]", "head[0]", "loss"),
    ]
    # The local derivatives of path 3, by hand: x into the second use is s = x + tanh(shared(x)).
    P = {k: v.copy() for k, v in model.parameters().items()}
    W, b, V, c = P["shared.weight"], P["shared.bias"], P["head.weight"], P["head.bias"]
    s = X + np.tanh(X @ W.T + b)
    z2 = s @ W.T + b
    out = np.tanh(z2) @ V.T + c
    dE = 2 * (out - y) / out.size
    expected = s[:, 1] * (1 - np.tanh(z2[:, 0]) ** 2) * V[0, 0] * dE[:, 0]
    np.testing.assert_allclose(rep.paths[2].per_example, expected, rtol=1e-13)
    assert rep.paths[2].value == pytest.approx(expected.sum(), rel=1e-13)
    assert abs(rep.path_sum - rep.backprop) <= PATH_TOL * abs(rep.backprop)
    # A bias has local derivative 1 where it enters.
    rb = lp.explain.path_gradients(model, X, y, "shared.bias", 1)
    assert all(np.all(p.factors[0] == 1.0) for p in rb.paths)
    assert abs(rb.path_sum - rb.backprop) <= PATH_TOL * abs(rb.backprop)
    text = str(rep)
    assert "3 paths" in text and "sum over paths" in text and "backprop" in text


def test_skip_connection_adds_paths():
    def build(skip):
        x = lp.Input(3)
        h = lp.Tanh()(lp.Linear(3, 3, name="a")(x))
        g = lp.Tanh()(lp.Linear(3, 3, name="b")(h))
        if skip:
            g = lp.add(g, h)
        return compiled(lp.Model(inputs=x, outputs=lp.Linear(3, 2, name="c")(g), dtype="float64", seed=0))

    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    plain = lp.explain.path_gradients(build(False), X, y, "a.weight", (1, 2))
    skip = lp.explain.path_gradients(build(True), X, y, "a.weight", (1, 2))
    assert len(plain.paths) == 3 * 2          # through each unit of b, to each output
    assert len(skip.paths) == 3 * 2 + 2       # plus add0[1] straight to each output
    for rep in (plain, skip):
        assert abs(rep.path_sum - rep.backprop) <= PATH_TOL * abs(rep.backprop)


def test_path_limit_refuses_with_the_count():
    model = compiled(lp.Sequential(lp.Linear(2, 4), lp.Tanh(), lp.Linear(4, 4), lp.Tanh(), lp.Linear(4, 3),
                                   dtype="float64", seed=0))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((2, 2)), rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match=r"12 paths lead from 0.weight\[0, 0\] to the loss, more than max_paths=11"):
        lp.explain.path_gradients(model, X, y, "0.weight", (0, 0), max_paths=11)
    assert len(lp.explain.path_gradients(model, X, y, "0.weight", (0, 0), max_paths=12).paths) == 12


def test_path_gradients_refusals():
    model = residual_shared()
    X, y = np.ones((2, 2)), np.ones((2, 1))
    with pytest.raises(RuntimeError, match="not compiled"):
        lp.explain.path_gradients(model, X, y, "shared.weight", (0, 0))
    compiled(model)
    with pytest.raises(ValueError, match=r"param: expected one of the model's parameters \['shared.weight'"):
        lp.explain.path_gradients(model, X, y, "shared.kernel", (0, 0))
    for bad in ((0,), (2, 0), (0, -1), 1.5, (0.0, 1)):
        with pytest.raises(ValueError, match=r"index: expected 2 ints within the shape \(2, 2\) of shared.weight"):
            lp.explain.path_gradients(model, X, y, "shared.weight", bad)
    with pytest.raises(ValueError, match="max_paths"):
        lp.explain.path_gradients(model, X, y, "shared.weight", (0, 0), max_paths=0)
    with pytest.raises(TypeError, match="model: expected an lp.Model"):
        lp.explain.gradcheck(object(), X, y)


# ------------------------------------------------------------------ gradcheck


def layer_zoo(act, dtype="float64", dropout=False):
    """Every graph feature around one activation: a bias-free Linear, a shared Linear, a skip
    add, a concat, optionally Dropout."""
    x = lp.Input(3)
    shared = lp.Linear(4, 4, name="shared")
    h = lp_activation(act)(lp.Linear(3, 4, bias=False, name="inp")(x))
    if dropout:
        h = lp.Dropout(0.3)(h)
    r = lp.add(h, lp_activation(act)(shared(h)))
    c = lp.concat([lp_activation(act)(shared(r)), x])
    return lp.Model(inputs=x, outputs=lp.Linear(7, 3, name="out")(c), dtype=dtype, seed=4)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradcheck_passes_on_every_activation(act, loss, rng):
    model = compiled(layer_zoo(act), loss)
    X, y = make_batch(rng, 5, 3, 3, loss)
    snap = snapshot(model)
    rep = lp.explain.gradcheck(model, X, y)
    assert rep.passed, str(rep)
    assert rep.max_rel_error <= 1e-6
    assert [r.name for r in rep.rows] == list(model.parameters())
    assert all(r.checked == r.size for r in rep.rows)
    assert all(r.max_grad > 0 for r in rep.rows)
    assert_unchanged(model, snap)


def test_gradcheck_float32_model_runs_on_a_float64_twin(rng):
    model = compiled(layer_zoo("tanh", dtype="float32"))
    X, y = make_batch(rng, 6, 3, 3, "mse", dtype="float32")
    snap = snapshot(model)
    rep = lp.explain.gradcheck(model, X, y)
    assert rep.passed and rep.max_rel_error < 1e-6, str(rep)
    assert "float64 twin of a float32 model" in str(rep)
    assert_unchanged(model, snap)


def test_gradcheck_with_dropout_in_training_mode_uses_one_mask(rng):
    model = compiled(layer_zoo("gelu", dropout=True))
    X, y = make_batch(rng, 8, 3, 3, "mse")
    snap = snapshot(model)
    train = lp.explain.gradcheck(model, X, y)
    assert train.passed, str(train)
    assert "dropout on (one fixed mask)" in str(train)
    model.eval()
    evaluation = lp.explain.gradcheck(model, X, y)
    assert evaluation.passed and "dropout off" in str(evaluation)
    assert train.loss != evaluation.loss  # dropout really was on
    model.train()
    assert_unchanged(model, snap)


def test_gradcheck_fails_on_a_wrong_gradient(monkeypatch, rng):
    """A test double: backprop's gradient perturbed in one entry must be caught (finite
    differences only ever use the loss)."""
    model = compiled(layer_zoo("sigmoid"))
    X, y = make_batch(rng, 5, 3, 3, "mse")
    real = lp.Model.loss_and_grads

    def wrong(self, X, y):
        value, grads = real(self, X, y)
        grads["shared.bias"][2] += 1e-4
        return value, grads

    monkeypatch.setattr(lp.Model, "loss_and_grads", wrong)
    rep = lp.explain.gradcheck(model, X, y)
    assert not rep.passed
    assert rep.failed == ["shared.bias"]
    row = next(r for r in rep.rows if r.name == "shared.bias")
    assert row.abs_error == pytest.approx(1e-4, rel=1e-3)
    assert rep.max_rel_error > 1e-6
    assert "FAIL" in str(rep) and "FAILED (shared.bias)" in str(rep)


def test_gradcheck_samples_big_parameters(rng):
    model = compiled(lp.Sequential(lp.Linear(60, 40), lp.ReLU(), lp.Linear(40, 2), dtype="float64", seed=0))
    X, y = make_batch(rng, 4, 60, 2, "mse")
    rep = lp.explain.gradcheck(model, X, y, max_entries=16)
    assert [(r.name, r.checked, r.size) for r in rep.rows] == [
        ("0.weight", 16, 2400), ("0.bias", 16, 40), ("2.weight", 16, 80), ("2.bias", 2, 2)]
    assert rep.passed, str(rep)
    assert "16 of 2400" in str(rep)
    with pytest.raises(ValueError, match="eps: expected a positive number"):
        lp.explain.gradcheck(model, X, y, eps=0.0)
    with pytest.raises(ValueError, match="max_entries"):
        lp.explain.gradcheck(model, X, y, max_entries=0)


# ------------------------------------------------------------------ taylor_check


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_taylor_ratio_tends_to_one(dtype, rng):
    model = compiled(layer_zoo("tanh", dtype=dtype), "cross_entropy")
    X, y = make_batch(rng, 10, 3, 3, "cross_entropy", dtype=dtype)
    snap = snapshot(model)
    steps = (1e-1, 1e-2, 1e-3, 1e-4)
    rep = lp.explain.taylor_check(model, X, y, steps=steps)
    assert rep.steps == list(steps)
    errors = [abs(r - 1.0) for r in rep.ratios]
    assert all(a > b for a, b in zip(errors, errors[1:])), rep.ratios
    assert errors[-1] < 1e-3
    _, grads = lp.explain._Twin(model, X, y).loss_and_grads()
    gnorm2 = sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())
    for row in rep.rows:
        assert row.predicted == pytest.approx(-row.step * gnorm2, rel=1e-12)
        assert row.actual < 0
    small = [r for r in rep.rows if r.step <= 1e-2]
    assert all(r.random_actual > r.actual for r in small)  # -grad decreases the loss most
    assert rep.passed
    assert "actual/predicted" in str(rep)
    assert_unchanged(model, snap)


def test_taylor_check_refuses_bad_steps():
    model = compiled(residual_shared())
    X, y = np.ones((2, 2)), np.ones((2, 1))
    for bad in ((), (0.1, -1.0), (math.inf,), "abc"):
        with pytest.raises(ValueError, match="steps:"):
            lp.explain.taylor_check(model, X, y, steps=bad)


# ------------------------------------------------------------------ moving_target


def test_moving_target_with_one_layer_is_still():
    model = compiled(lp.Sequential(lp.Linear(4, 3), dtype="float64", seed=0), "cross_entropy",
                     lp.SGD(lr=0.5))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, size=6)
    snap = snapshot(model)
    rep = lp.explain.moving_target(model, X, y)
    assert rep.layers == ["0"]
    assert rep.cosine["0"] == pytest.approx(1.0, abs=1e-14)
    assert rep.norm_ratio["0"] == pytest.approx(1.0, abs=1e-14)
    assert_unchanged(model, snap)


def test_moving_target_matches_a_manual_step(rng):
    model = compiled(layer_zoo("tanh"), "mse", lp.Adam(lr=0.05))
    X, y = make_batch(rng, 7, 3, 3, "mse")
    snap = snapshot(model)
    rep = lp.explain.moving_target(model, X, y)
    assert rep.layers == ["inp", "shared", "out"] and rep.lr == 0.05
    assert_unchanged(model, snap)

    # The oracle: for "shared", step inp and out by -lr * grad on a copy, recompute.
    copy = compiled(layer_zoo("tanh"), "mse")
    for k, v in model.parameters().items():
        copy.parameters()[k][...] = v
    _, g0 = copy.loss_and_grads(X, y)
    for k in ("inp.weight", "out.weight", "out.bias"):
        copy.parameters()[k][...] -= 0.05 * g0[k]
    _, g1 = copy.loss_and_grads(X, y)
    a = np.concatenate([g0["shared.weight"].ravel(), g0["shared.bias"]])
    b = np.concatenate([g1["shared.weight"].ravel(), g1["shared.bias"]])
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert rep.cosine["shared"] == pytest.approx(cos, rel=1e-12)
    assert rep.norm_ratio["shared"] == pytest.approx(np.linalg.norm(b) / np.linalg.norm(a), rel=1e-12)
    assert rep.cosine["shared"] < 1 - 1e-6  # the target really moved
    assert "norm after / before" in str(rep)


# ------------------------------------------------------------------ the model is never touched


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_explain_call_leaves_the_model_bitwise_unchanged(dtype, rng):
    model = compiled(layer_zoo("relu", dtype=dtype, dropout=True), "mse", lp.Adam(lr=0.01))
    X, y = make_batch(rng, 6, 3, 3, "mse", dtype=dtype)
    model.train_step(X, y)  # optimizer state and gradients exist
    model.compute_gradients(X, y)
    snap = snapshot(model)
    state = [np.array(model._core.state_view(s), copy=True) for s in (0, 1)]
    lp.explain.gradcheck(model, X, y)
    lp.explain.path_gradients(model, X, y, "shared.weight", (1, 2))
    lp.explain.taylor_check(model, X, y)
    lp.explain.moving_target(model, X, y)
    assert_unchanged(model, snap)
    for s in (0, 1):
        assert np.array_equal(model._core.state_view(s), state[s])


# ------------------------------------------------------------------ command line


def test_cli_explain(capsys):
    from layerprop.cli import main
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert "max rel error" in out and ": passed" in out
    assert "3 paths from the weight to the loss" in out
    assert "shared.weight[0, 1] -> shared(2)[0] -> tanh1[0] -> head[0] -> loss" in out
    path_sum = next(float(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("sum over paths"))
    backprop = next(float(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("backprop "))
    assert path_sum == pytest.approx(backprop, rel=1e-14) and backprop != 0
    assert "actual/predicted" in out and "norm after / before" in out
