"""RMSprop and Adagrad: PyTorch's torch.optim rules (single-tensor CPU path) over many steps,
in every schedule that steps an optimizer, their named state, save/load, bitwise
reproducibility across builds and thread counts, and argument checks."""

import json

import numpy as np
import pytest

import layerprop as lp
import reference
from conftest import OPTIMIZERS, assert_close, build_mlp, lp_optimizer, make_batch, read_saved
from simd_builds import assert_same_update_bits, optimizer_updates_script, outputs_of_builds  # noqa: E402

torch = pytest.importorskip("torch")

TOL = {"float64": 1e-9, "float32": 1e-4}
NEW = [k for k in OPTIMIZERS if k.startswith(("rmsprop", "adagrad"))]


def torch_net(model, sizes, dtype):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers).to(getattr(torch, dtype))
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(model.parameters()[name])))
    return net


def torch_opt(key, params):
    cls, kw = OPTIMIZERS[key]
    return getattr(torch.optim, cls)(params, foreach=False, **kw)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", NEW)
def test_many_steps_match_torch(opt, dtype):
    """40 steps. float64: independent trajectories (train_step vs autograd + torch.optim);
    float32: torch steps on layerprop's own gradients, so the update rule is compared on
    identical inputs (see test_torch_oracle)."""
    sizes = [5, 12, 7, 3]
    model, _ = build_mlp(sizes, "tanh", dtype=dtype, seed=11)
    model.compile(loss="cross_entropy", optimizer=lp_optimizer(opt))
    net = torch_net(model, sizes, dtype)
    topt = torch_opt(opt, net.parameters())
    rng = np.random.default_rng(3)
    for step in range(40):
        X, y = make_batch(rng, 9, sizes[0], sizes[-1], "cross_entropy", dtype)
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        if dtype == "float64":
            model.train_step(X, y)
        else:
            model.compute_gradients(X, y)
            for name, p in net.named_parameters():
                p.grad = torch.from_numpy(np.array(model.gradients()[name]))
            model.apply_gradients()
        topt.step()
        for name, p in net.named_parameters():
            assert_close(model.parameters()[name], p.detach().numpy(), TOL[dtype], f"step {step} {name}")
    # The named state agrees with torch's, slot by slot.
    names = model._core.state_names()
    for k, (name, p) in enumerate(net.named_parameters()):
        st = topt.state[p]
        for slot in names:
            assert slot in st, (slot, sorted(st))
        assert int(model._core.steps()[k]) == int(st["step"].item()) == 40


@pytest.mark.parametrize("opt,names", [
    ("rmsprop", ["square_avg"]),
    ("rmsprop_centered_momentum_wd", ["square_avg", "momentum_buffer", "grad_avg"]),
    ("rmsprop_centered_small_alpha", ["square_avg", "grad_avg"]),
    ("adagrad", ["sum"]),
    ("adam", ["exp_avg", "exp_avg_sq"]),
    ("sgd", []),
    ("sgd_nesterov", ["momentum_buffer"]),
])
def test_state_slots_have_torch_names(opt, names):
    model, _ = build_mlp([3, 4, 2], "relu", seed=0)
    model.compile(loss="mse", optimizer=lp_optimizer(opt))
    assert model._core.state_names() == names
    n = model._core.num_params
    for k, name in enumerate(names):
        assert model._core.state_view(name).size == n
        assert np.shares_memory(model._core.state_view(name), model._core.state_view(k))
    with pytest.raises(ValueError, match="no state slot called 'nope'"):
        model._core.state_view("nope")
    with pytest.raises(ValueError, match="slot"):
        model._core.state_view(3)
    with pytest.raises(TypeError, match="slot"):
        model._core.state_view(1.5)


def test_adagrad_initial_accumulator_value_fills_sum():
    model, _ = build_mlp([3, 4, 2], "relu", seed=0)
    model.compile(loss="mse", optimizer=lp.Adagrad(initial_accumulator_value=0.25))
    assert np.all(model._core.state_view("sum") == 0.25)


@pytest.mark.parametrize("opt", ["rmsprop_centered_momentum_wd", "adagrad_decay_wd_init"])
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_layerwise_matches_reference(order, opt):
    """Each unit: a full forward and backward at the current weights, then an update of that
    unit only, with its own float64 NumPy optimizer (tests/reference.py)."""
    sizes = [6, 8, 5, 3]
    model, _ = build_mlp(sizes, "tanh", seed=4)
    model.compile(loss="cross_entropy", optimizer=lp_optimizer(opt), schedule=lp.Layerwise(order=order))
    ref, _ = build_mlp(sizes, "tanh", seed=4)
    ref.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.0))  # for its gradients only
    units = ["0", "2", "4"] if order == "bottom_up" else ["4", "2", "0"]
    cls, kw = OPTIMIZERS[opt]
    ref_opts = {u: getattr(reference, cls)(**kw) for u in units}
    rng = np.random.default_rng(1)
    for _ in range(4):
        X, y = make_batch(rng, 10, 6, 3, "cross_entropy")
        model.train_step(X, y)
        for u in units:
            ref.compute_gradients(X, y)
            grads = {n: g.copy() for n, g in ref.gradients().items()}
            params = {n: p for n, p in ref.parameters().items() if n.rsplit(".", 1)[0] == u}
            ref_opts[u].step(params, {n: grads[n] for n in params})
    for n, p in model.parameters().items():
        assert_close(p, ref.parameters()[n], 1e-9, n)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", ["rmsprop_centered_momentum_wd", "adagrad_decay_wd_init"])
def test_locoprop_inner_steps_match_torch(opt, dtype):
    """LocoProp-S: targets a - gamma * dL/da from the unchanged network; then per layer
    inner_steps steps of torch.optim on 0.5 * ||x W^T + b - t||^2 at learning rates
    lr * max(1 - k / K, 0.25), the optimizer's state kept across training steps."""
    sizes, gamma, K = [5, 6, 4, 3], 0.5, 3
    model, _ = build_mlp(sizes, "tanh", dtype=dtype, seed=2)
    model.compile(loss="mse", optimizer=lp_optimizer(opt),
                  schedule=lp.LocoProp(variant="S", inner_steps=K, target_lr=gamma))
    net = torch_net(model, sizes, dtype)
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    opts = [torch_opt(opt, lin.parameters()) for lin in lins]
    base = OPTIMIZERS[opt][1]["lr"]
    rng = np.random.default_rng(8)
    for step in range(3):
        X, y = make_batch(rng, 7, sizes[0], sizes[-1], "mse", dtype)
        h, ins, pre = torch.from_numpy(X), [], []
        for i, lin in enumerate(lins):
            ins.append(h.detach())
            a = lin(h)
            a.retain_grad()
            pre.append(a)
            h = torch.tanh(a) if i < len(lins) - 1 else a
        torch.nn.functional.mse_loss(h, torch.from_numpy(y)).backward()
        targets = [(a - gamma * a.grad).detach() for a in pre]
        for lin, o, x, t in zip(lins, opts, ins, targets):
            for k in range(K):
                for g in o.param_groups:
                    g["lr"] = base * max(1.0 - k / K, 0.25)
                o.zero_grad()
                (0.5 * ((lin(x) - t) ** 2).sum()).backward()
                o.step()
        model.train_step(X, y)
        for name, p in net.named_parameters():
            assert_close(model.parameters()[name], p.detach().numpy(), TOL[dtype], f"step {step} {name}")


@pytest.mark.parametrize("opt", NEW)
def test_save_load_round_trip_continues_bitwise(opt, tmp_path):
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, 8, 4, 3, "mse", "float32") for _ in range(6)]
    model, _ = build_mlp([4, 6, 3], "tanh", dtype="float32", seed=1)
    model.compile(loss="mse", optimizer=lp_optimizer(opt))
    for X, y in batches[:3]:
        model.train_step(X, y)
    path = tmp_path / "m.safetensors"
    model.save(path)
    back = lp.load(path)
    assert type(back.optimizer) is type(model.optimizer) and repr(back.optimizer) == repr(model.optimizer)
    assert back._core.state_names() == model._core.state_names()
    for name in model._core.state_names():
        assert np.array_equal(back._core.state_view(name), model._core.state_view(name)), name
    for X, y in batches[3:]:
        assert model.train_step(X, y) == back.train_step(X, y)
    for n, p in model.parameters().items():
        assert np.array_equal(p, back.parameters()[n]), n


def _file(tmp_path, opt):
    model, _ = build_mlp([4, 6, 3], "tanh", dtype="float32", seed=1)
    model.compile(loss="mse", optimizer=opt)
    X, y = make_batch(np.random.default_rng(0), 8, 4, 3, "mse", "float32")
    model.train_step(X, y)
    path = tmp_path / "m.safetensors"
    model.save(path)
    tensors, meta = read_saved(path)
    return model, tensors, meta


def test_file_names_the_slots_and_files_without_names_still_load(tmp_path):
    import safetensors.numpy as st
    model, tensors, meta = _file(tmp_path, lp.RMSprop(momentum=0.9, centered=True))
    assert meta["optimizer_state"] == {"slots": 3, "steps": "optimizer.steps",
                                       "names": ["square_avg", "momentum_buffer", "grad_avg"]}
    assert "optimizer.slot2.0.weight" in tensors
    del meta["optimizer_state"]["names"]  # as files written before RMSprop and Adagrad
    old = tmp_path / "old.safetensors"
    st.save_file(tensors, str(old), metadata={"layerprop": json.dumps(meta)})
    back = lp.load(old)
    assert np.array_equal(back._core.state_view("grad_avg"), model._core.state_view("grad_avg"))


@pytest.mark.parametrize("mutate,match", [
    (lambda t, m: m["optimizer_state"].update(names=["square_avg", "grad_avg", "momentum_buffer"]), "names"),
    (lambda t, m: m["optimizer_state"].update(names=["square_avg"]), "names"),
    (lambda t, m: m["optimizer_state"].update(names="square_avg"), "names"),
    (lambda t, m: m["compile"]["optimizer"]["config"].update(alpha=-0.5), "alpha"),
    (lambda t, m: m["compile"]["optimizer"]["config"].update(centered="yes"), "centered"),
    (lambda t, m: m["compile"]["optimizer"]["config"].pop("momentum"), "momentum"),
    (lambda t, m: t["optimizer.slot0.0.weight"].__setitem__((0, 0), -1.0), "second moments must be >= 0"),
])
def test_bad_rmsprop_files_are_refused(tmp_path, mutate, match):
    import safetensors.numpy as st
    _, tensors, meta = _file(tmp_path, lp.RMSprop(momentum=0.9, centered=True))
    tensors = {k: v.copy() for k, v in tensors.items()}
    mutate(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    st.save_file(tensors, str(bad), metadata={"layerprop": json.dumps(meta)})
    with pytest.raises(ValueError, match=match):
        lp.load(bad)


def test_adagrad_negative_sum_in_file_is_refused(tmp_path):
    import safetensors.numpy as st
    _, tensors, meta = _file(tmp_path, lp.Adagrad())
    tensors = {k: v.copy() for k, v in tensors.items()}
    tensors["optimizer.slot0.2.bias"][0] = -1.0
    bad = tmp_path / "bad.safetensors"
    st.save_file(tensors, str(bad), metadata={"layerprop": json.dumps(meta)})
    with pytest.raises(ValueError, match="Adagrad's sums of squared gradients must be >= 0"):
        lp.load(bad)


_OPTS = """{
    "r": lambda: lp.RMSprop(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01),
    "rs": lambda: lp.RMSprop(lr=1e-3, alpha=0.4, centered=True),
    "a": lambda: lp.Adagrad(lr=0.01, lr_decay=0.01, weight_decay=0.01),
}"""


def test_bitwise_equal_across_builds_and_thread_counts(tmp_path):
    """The update rules give the same bits in the AVX-512, the AVX2 and the portable build, on
    one or two threads (a 300 x 257 weight is split between threads)."""
    runs = outputs_of_builds(tmp_path, optimizer_updates_script(_OPTS, 3, (-6, 2), seed=0), timeout=300)
    assert sorted(runs) == ["avx2", "default", "scalar"]
    assert_same_update_bits(runs)


@pytest.mark.parametrize("make,match", [
    (lambda: lp.RMSprop(lr=-0.1), "lr"),
    (lambda: lp.RMSprop(alpha=-1), "alpha"),
    (lambda: lp.RMSprop(alpha=float("nan")), "alpha"),
    (lambda: lp.RMSprop(eps=-1e-8), "eps"),
    (lambda: lp.RMSprop(momentum=-0.5), "momentum"),
    (lambda: lp.RMSprop(weight_decay="x"), "weight_decay"),
    (lambda: lp.RMSprop(centered=1), "centered"),
    (lambda: lp.Adagrad(lr=float("inf")), "lr"),
    (lambda: lp.Adagrad(lr_decay=-0.1), "lr_decay"),
    (lambda: lp.Adagrad(weight_decay=-1), "weight_decay"),
    (lambda: lp.Adagrad(initial_accumulator_value=-1), "initial_accumulator_value"),
    (lambda: lp.Adagrad(eps=None), "eps"),
])
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("kw,match", [
    (dict(optimizer=4, lr=-1.0), "lr"),
    (dict(optimizer=4, lr=0.1, alpha=-1.0), "alpha"),
    (dict(optimizer=4, lr=0.1, momentum=float("nan")), "momentum"),
    (dict(optimizer=5, lr=0.1, lr_decay=-1.0), "lr_decay"),
    (dict(optimizer=5, lr=0.1, initial_accumulator_value=float("inf")), "initial_accumulator_value"),
    (dict(optimizer=2, lr=0.1, beta1=1.0), r"betas\[0\]"),
    (dict(optimizer=1, lr=0.1, nesterov=True), "nesterov"),
    (dict(optimizer=6, lr=0.1), "unknown optimizer"),
    (dict(optimizer=-1, lr=0.1), "unknown optimizer"),
])
def test_core_checks_what_it_reads(kw, match):
    """The core refuses a bad setting by name, before changing anything."""
    model, _ = build_mlp([3, 4, 2], "relu", seed=0)
    model.compile(loss="mse", optimizer=lp.Adam())
    X, y = make_batch(np.random.default_rng(0), 4, 3, 2, "mse")
    model.train_step(X, y)
    before = model._core.snapshot()
    with pytest.raises(ValueError, match=match):
        model._core.compile(loss=1, **kw)
    after = model._core.snapshot()
    assert after["state_names"] == before["state_names"] == ["exp_avg", "exp_avg_sq"]
    for k in ("params", "state0", "state1", "steps"):
        assert np.array_equal(after[k], before[k]), k


def test_codes_come_from_the_core():
    from layerprop import _core
    assert [lp.SGD.kind, lp.Adam.kind, lp.AdamW.kind, lp.RMSprop.kind, lp.Adagrad.kind] == [1, 2, 3, 4, 5]
    assert _core.OptKind.RMSprop.value == lp.RMSprop.kind and _core.OptKind.Adagrad.value == lp.Adagrad.kind


@pytest.mark.parametrize("opt", [lambda: lp.RMSprop(lr=0.01, momentum=0.9, centered=True),
                                 lambda: lp.Adagrad(lr=0.1, initial_accumulator_value=0.5)],
                         ids=["rmsprop3", "adagrad"])
@pytest.mark.parametrize("schedule", [lp.Layerwise(), lp.LocoProp(variant="S", inner_steps=2),
                                      lp.LocoProp(variant="M", inner_steps=2)], ids=repr)
def test_a_non_finite_step_puts_every_slot_back(opt, schedule):
    """Layerwise and LocoProp update inside the step: a step that goes non-finite leaves every
    named state slot, the step counts and the parameters as they were."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 8)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    m = lp.Sequential(lp.Linear(8, 6), lp.Tanh(), lp.Linear(6, 5), lp.Tanh(), lp.Linear(5, 3), seed=0)
    m.compile(loss="cross_entropy", optimizer=opt(), schedule=schedule)
    m.train_step(X, y)  # the state is not trivial
    m.parameters()["0.weight"][0, :] = 3e38  # the next forward overflows (the updates still run)
    names = m._core.state_names()
    before = {s: np.array(m._core.state_view(s)) for s in names}
    steps = list(m._core.steps())
    params = {k: v.copy() for k, v in m.parameters().items()}
    with pytest.raises(lp.NonFiniteError, match="not applied"):
        m.train_step(X, y)
    for s in names:
        assert np.array_equal(m._core.state_view(s), before[s]), s
    assert list(m._core.steps()) == steps
    for k, v in m.parameters().items():
        assert np.array_equal(v, params[k]), k
