"""Update schedules: Layerwise against a straightforward reference, its cost, LocoProp's local
problems against autograd of the local losses."""

import numpy as np
import pytest

import layerprop as lp
import reference
from conftest import OPTIMIZERS, lp_optimizer


def _mlp(bn, seed=0, dtype="float64", act=lp.Tanh):
    layers = [lp.Linear(6, 8)]
    if bn:
        layers.append(lp.BatchNorm1d(8))
    layers += [act(), lp.Linear(8, 7), act(), lp.Linear(7, 3)]
    return lp.Sequential(*layers, dtype=dtype, seed=seed)


def _units(model):
    """Parameter prefixes of the units, in topological order."""
    seen = []
    for name in model.parameters():
        p = name.rsplit(".", 1)[0]
        if p not in seen:
            seen.append(p)
    return seen


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("opt", ["sgd_momentum_dampening_wd", "adam"])
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_layerwise_matches_reference(order, opt, bn):
    """Reference: for each unit in order, a full forward and backward at the current weights,
    then an update of that unit only (its own optimizer state)."""
    model = _mlp(bn)
    model.compile(loss="cross_entropy", optimizer=lp_optimizer(opt), schedule=lp.Layerwise(order=order))
    ref = _mlp(bn)
    ref.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.0))  # used for its gradients only
    units = _units(ref)
    if order == "top_down":
        units = units[::-1]
    cls, kw = OPTIMIZERS[opt]
    ref_opts = {u: getattr(reference, cls)(**kw) for u in units}
    rng = np.random.default_rng(1)
    for _ in range(3):
        X = rng.standard_normal((10, 6))
        y = rng.integers(0, 3, 10)
        loss = model.train_step(X, y)
        stats = None
        for k, u in enumerate(units):
            ref_loss = ref.compute_gradients(X, y)  # a training forward: statistics move
            grads = {n: g.copy() for n, g in ref.gradients().items()}
            if k == 0:
                assert loss == pytest.approx(ref_loss, rel=1e-12)  # the loss before any update
                stats = {n: b.copy() for n, b in ref.buffers().items()}
            else:  # running statistics move once per step
                for n, b in ref.buffers().items():
                    b[...] = stats[n]
            params = {n: p for n, p in ref.parameters().items() if n.rsplit(".", 1)[0] == u}
            ref_opts[u].step(params, {n: grads[n] for n in params})
        for n, p in model.parameters().items():
            r = ref.parameters()[n]
            assert np.abs(p - r).max() <= 1e-9 * np.abs(r).max(), n
        for n, b in model.buffers().items():
            assert np.abs(b - ref.buffers()[n]).max() <= 1e-9 * np.abs(ref.buffers()[n]).max(), n


def test_layerwise_on_one_unit_equals_simultaneous():
    X = np.random.default_rng(0).standard_normal((9, 5))
    y = np.random.default_rng(1).standard_normal((9, 3))
    runs = []
    for sched in (lp.Simultaneous(), lp.Layerwise("top_down"), lp.Layerwise("bottom_up")):
        m = lp.Sequential(lp.Linear(5, 3), lp.Tanh(), dtype="float64", seed=4)
        m.compile(loss="mse", optimizer=lp.Adam(lr=0.05), schedule=sched)
        losses = [m.train_step(X, y) for _ in range(4)]
        runs.append((losses, [v.copy() for v in m.parameters().values()]))
    for losses, params in runs[1:]:
        assert losses == runs[0][0]
        assert all(np.array_equal(a, b) for a, b in zip(params, runs[0][1]))


def test_layerwise_cost_reuses_unchanged_activations():
    """Linear-ReLU-Linear-ReLU-Linear: nodes L1(+ReLU fused) L2(+ReLU fused) L3.
    Simultaneous: 3 forward (fused activations count with their Linear), 5 backward.
    Top-down: L3 [full forward 3, backward 1]; L2 [forward from L3: 1, backward L3 act L2: 3];
    L1 [forward from L2: 2, backward 5] -> 6 forward, 9 backward.
    Bottom-up: L1 [3, 5]; L2 [forward from L1: 3, backward 3]; L3 [forward from L2: 2, backward 1]
    -> 8 forward, 9 backward."""
    X = np.ones((4, 3), np.float32)
    y = np.zeros((4, 2), np.float32)
    cost = {}
    for key, sched in (("sim", lp.Simultaneous()), ("td", lp.Layerwise("top_down")), ("bu", lp.Layerwise("bottom_up"))):
        m = lp.Sequential(lp.Linear(3, 4), lp.ReLU(), lp.Linear(4, 4), lp.ReLU(), lp.Linear(4, 2), seed=0)
        m.compile(loss="mse", schedule=sched)
        m.train_step(X, y)
        cost[key] = m.step_cost()
    assert cost["sim"] == {"forward": 3, "backward": 5}
    assert cost["td"] == {"forward": 6, "backward": 9}
    assert cost["bu"] == {"forward": 8, "backward": 9}


def test_apply_gradients_only_for_simultaneous():
    m = _mlp(False)
    m.compile(loss="cross_entropy", schedule=lp.Layerwise())
    m.compute_gradients(np.ones((4, 6)), np.zeros(4, dtype=np.int64))
    with pytest.raises(RuntimeError, match="Simultaneous"):
        m.apply_gradients()


def test_schedule_arguments_checked():
    with pytest.raises(ValueError, match="order"):
        lp.Layerwise(order="sideways")
    with pytest.raises(ValueError, match="variant"):
        lp.LocoProp(variant="X")
    with pytest.raises(ValueError, match="inner_steps"):
        lp.LocoProp(inner_steps=0)
    with pytest.raises(ValueError, match="target_lr"):
        lp.LocoProp(target_lr=-1)
    m = _mlp(False)
    with pytest.raises(TypeError, match="schedule"):
        m.compile(loss="mse", schedule="layerwise")
    x = lp.Input(4)
    shared = lp.Linear(4, 4)
    g = lp.Model(x, lp.Linear(4, 2)(shared(lp.Tanh()(shared(x)))), seed=0)
    with pytest.raises(ValueError, match="LocoProp.*shared"):
        g.compile(loss="mse", schedule=lp.LocoProp())


# ----------------------------------------------------------------------------- LocoProp

torch = pytest.importorskip("torch")

_F = {  # transfer function f and its convex integral F (F' = f) for the matching losses
    "tanh": (torch.tanh, lambda a: torch.log(torch.cosh(a))),
    "sigmoid": (torch.sigmoid, lambda a: torch.nn.functional.softplus(a)),
    "identity": (lambda a: a, lambda a: 0.5 * a * a),
}


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
@pytest.mark.parametrize("variant", ["S", "M"])
@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_locoprop_local_gradients_match_autograd(act, variant, loss):
    """One inner step of SGD(lr) on every layer equals lr times autograd's gradient of that
    layer's local loss, with targets from the unchanged network."""
    lp_act = {"tanh": lp.Tanh, "sigmoid": lp.Sigmoid}[act]
    model = lp.Sequential(lp.Linear(5, 6), lp_act(), lp.Linear(6, 4), lp_act(), lp.Linear(4, 3),
                          dtype="float64", seed=2)
    gamma, lr = 0.7, 0.3
    model.compile(loss=loss, optimizer=lp.SGD(lr=lr),
                  schedule=lp.LocoProp(variant=variant, inner_steps=1, target_lr=gamma))
    rng = np.random.default_rng(5)
    X = rng.standard_normal((8, 5))
    y = rng.integers(0, 3, 8) if loss == "cross_entropy" else rng.uniform(0, 1, (8, 3))
    before = {n: torch.tensor(p, requires_grad=True) for n, p in model.parameters().items()}
    # Global forward and dL/da of each layer, by autograd.
    f, _ = _F[act]
    x = torch.from_numpy(X)
    inputs, pre = [], []
    h = x
    for i, name in enumerate(["0", "2", "4"]):
        inputs.append(h.detach())
        a = h @ before[f"{name}.weight"].T + before[f"{name}.bias"]
        a.retain_grad()
        pre.append(a)
        h = f(a) if i < 2 else a
    tl = {"cross_entropy": lambda z: torch.nn.functional.cross_entropy(z, torch.from_numpy(y)),
          "mse": lambda z: torch.nn.functional.mse_loss(z, torch.from_numpy(y)),
          "bce_with_logits": lambda z: torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(y))}[loss]
    L = tl(h)
    L.backward()
    loss_value = model.train_step(X, y)
    assert loss_value == pytest.approx(L.item(), rel=1e-12)
    out_link = {"cross_entropy": (lambda a: torch.softmax(a, 1), lambda a: torch.logsumexp(a, 1)),
                "bce_with_logits": _F["sigmoid"], "mse": _F["identity"]}[loss]
    for i, name in enumerate(["0", "2", "4"]):
        a, g = pre[i].detach(), pre[i].grad
        fi, Fi = _F[act] if i < 2 else out_link
        W = before[f"{name}.weight"].detach().clone().requires_grad_(True)
        b = before[f"{name}.bias"].detach().clone().requires_grad_(True)
        a2 = inputs[i] @ W.T + b
        if variant == "S":
            t = a - gamma * g
            local = 0.5 * ((a2 - t) ** 2).sum()
        else:
            t = fi(a) - gamma * g
            local = Fi(a2).sum() - (t * a2).sum()  # matching loss: gradient f(a2) - t
        local.backward()
        for p, grad in ((f"{name}.weight", W.grad), (f"{name}.bias", b.grad)):
            expected = before[p].detach().numpy() - lr * grad.numpy()
            got = model.parameters()[p]
            assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max(), (p, variant)


@pytest.mark.parametrize("inner_steps,lr,tol", [(1, 0.1, 1e-9), (3, 1e-3, 1e-3)])
@pytest.mark.parametrize("variant", ["S", "M"])
def test_locoprop_small_target_step_follows_backprop(variant, inner_steps, lr, tol):
    """A local problem's first gradient is target_lr * dL/dW, so one inner step moves every
    layer along -dL/dW (cosine 1). More inner steps turn with the local problem's own curvature
    (about lr * sum ||x||^2 per step), so they stay near backprop's direction only while that
    is small."""
    model = _mlp(False)
    twin = _mlp(False)
    model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=lr),
                  schedule=lp.LocoProp(variant=variant, inner_steps=inner_steps, target_lr=1e-3))
    twin.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.0))
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
    _, grads = twin.loss_and_grads(X, y)
    before = {n: p.copy() for n, p in model.parameters().items()}
    model.train_step(X, y)
    for n, p in model.parameters().items():
        d = (p - before[n]).ravel()
        g = grads[n].ravel()
        cos = -d @ g / (np.linalg.norm(d) * np.linalg.norm(g))
        assert cos > 1 - tol, (n, cos)


@pytest.mark.parametrize("sched", [lp.LocoProp("S", inner_steps=5, target_lr=10.0),
                                   lp.LocoProp("M", inner_steps=5, target_lr=10.0),
                                   lp.Layerwise("top_down"), lp.Layerwise("bottom_up")], ids=repr)
def test_schedules_learn_and_are_thread_independent(sched):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 20)).astype(np.float32)
    y = (X[:, :3].sum(1) > 0).astype(np.int64) + (X[:, 3] > 0.5)
    old = lp.get_num_threads()
    runs = []
    try:
        for nt in (1, 2):
            lp.set_num_threads(nt)
            m = lp.Sequential(lp.Linear(20, 64), lp.BatchNorm1d(64), lp.ReLU(), lp.Linear(64, 64), lp.ReLU(),
                              lp.Linear(64, 3), seed=3)
            if getattr(sched, "variant", None) == "M":  # the Linear before BatchNorm falls back to S
                with pytest.warns(UserWarning, match=r"LocoProp\('M'\): the Linear layer\(s\) 0 are"):
                    m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-2), schedule=sched)
            else:
                m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-2), schedule=sched)
            h = m.fit(X, y, epochs=8, batch_size=32, progress=False)
            runs.append((h.history["loss"], [v.copy() for v in m.parameters().values()]))
    finally:
        lp.set_num_threads(old)
    losses = runs[0][0]
    assert losses[-1] < 0.6 * losses[0]
    assert runs[0][0] == runs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def _fallback_names(model):
    import warnings as w
    with w.catch_warnings(record=True) as seen:
        w.simplefilter("always")
        model.compile(loss="mse", optimizer=lp.SGD(lr=0.1), schedule=lp.LocoProp("M"))
    msgs = [str(x.message) for x in seen if "LocoProp('M')" in str(x.message)]
    assert len(msgs) <= 1
    return msgs[0].split("layer(s) ")[1].split(" are")[0].split(", ") if msgs else []


def test_locoprop_m_warns_once_naming_every_linear_whose_target_falls_back_to_s():
    # M needs a Linear's transfer function: its only consumer being an activation (or, for the
    # output layer, the loss's link). Anything else falls back to S's target, with a warning.
    assert _fallback_names(lp.Sequential(lp.Linear(4, 8), lp.Tanh(), lp.Linear(8, 2))) == []
    assert _fallback_names(lp.Sequential(lp.Linear(4, 8), lp.BatchNorm1d(8), lp.Tanh(), lp.Linear(8, 2))) == ["0"]
    assert _fallback_names(lp.Sequential(lp.Linear(4, 8), lp.LayerNorm(8), lp.Tanh(), lp.Linear(8, 2))) == ["0"]
    assert _fallback_names(lp.Sequential(lp.Linear(4, 8), lp.Dropout(0.1), lp.Tanh(), lp.Linear(8, 2))) == ["0"]
    x = lp.Input(4)
    h = lp.Linear(4, 4, name="skip")(x)
    out = lp.Linear(4, 2, name="head")(lp.add(lp.Tanh()(h), h))  # h read by the Tanh and the add
    assert _fallback_names(lp.Model(inputs=x, outputs=out)) == ["skip"]
    # S has no transfer functions to miss; the output layer is never a fallback
    m = lp.Sequential(lp.Linear(4, 8), lp.BatchNorm1d(8), lp.Tanh(), lp.Linear(8, 2))
    import warnings as w
    with w.catch_warnings():
        w.simplefilter("error")
        m.compile(loss="mse", optimizer=lp.SGD(lr=0.1), schedule=lp.LocoProp("S"))


def _paper_locoprop_s_step(W1, b1, W2, b2, X, Y, loss, gamma, K, base):
    """One LocoProp-S step written from the paper (float64 NumPy): the loss of a sample sums
    over its outputs (mse as 1/2 the squared error) and the batch is averaged; targets
    t = a - gamma dL/da; each layer then takes K plain gradient steps on 1/2 ||x W^T + b - t||^2
    summed over the batch, at lr base * max(1 - k/K, 0.25), its input fixed."""
    N = X.shape[0]
    a1 = X @ W1.T + b1
    h = np.tanh(a1)
    z = h @ W2.T + b2
    dz = ((1 / (1 + np.exp(-z)) - Y) if loss == "bce_with_logits" else (z - Y)) / N
    da1 = (dz @ W2) * (1 - h * h)
    targets = [(X, a1 - gamma * da1, W1.copy(), b1.copy()), (h, z - gamma * dz, W2.copy(), b2.copy())]
    out = []
    for x, t, W, b in targets:
        for k in range(K):
            lr = base * max(1 - k / K, 0.25)
            d = x @ W.T + b - t
            W -= lr * d.T @ x
            b -= lr * d.sum(0)
        out += [W, b]
    return out


@pytest.mark.parametrize("loss", ["bce_with_logits", "mse"])
def test_locoprop_target_lr_in_the_papers_units_matches_a_reference_written_from_the_paper(loss):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 6))
    Y = rng.random((16, 5)) if loss == "bce_with_logits" else rng.standard_normal((16, 5))
    m = lp.Sequential(lp.Linear(6, 7), lp.Tanh(), lp.Linear(7, 5), dtype="float64", seed=1)
    p0 = [v.copy() for v in m.parameters().values()]
    m.compile(loss=loss, optimizer=lp.SGD(lr=0.01),
              schedule=lp.LocoProp("S", inner_steps=4, target_lr=10.0, units="paper"))
    m.train_step(X, Y)
    ref = _paper_locoprop_s_step(*p0, X, Y, loss, gamma=10.0, K=4, base=0.01)
    for got, want in zip(m.parameters().values(), ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # in layerprop's own units the same number is a D (bce) or D/2 (mse) times smaller step
    m2 = lp.Sequential(lp.Linear(6, 7), lp.Tanh(), lp.Linear(7, 5), dtype="float64", seed=1)
    factor = 5 if loss == "bce_with_logits" else 2.5
    m2.compile(loss=loss, optimizer=lp.SGD(lr=0.01),
               schedule=lp.LocoProp("S", inner_steps=4, target_lr=10.0 * factor))
    m2.train_step(X, Y)
    for got, want in zip(m2.parameters().values(), ref):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_locoprop_units_are_checked_saved_and_loaded(tmp_path):
    with pytest.raises(ValueError, match="units"):
        lp.LocoProp("M", units="natural")
    m = lp.Sequential(lp.Linear(3, 4), lp.Tanh(), lp.Linear(4, 2), dtype="float64", seed=0)
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.1), schedule=lp.LocoProp("S", units="paper"))
    m.save(tmp_path / "m.safetensors")
    back = lp.load(tmp_path / "m.safetensors")
    assert back.schedule.units == "paper" and "units='paper'" in repr(back.schedule)
    X = np.random.default_rng(0).standard_normal((8, 3))
    Y = np.random.default_rng(1).standard_normal((8, 2))
    assert m.train_step(X, Y) == back.train_step(X, Y)
    for name, p in m.parameters().items():
        assert np.array_equal(p, back.parameters()[name])
