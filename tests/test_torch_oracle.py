"""PyTorch as the oracle for whole models: loss, every gradient, optimizer steps, fit, init."""

import zlib

import numpy as np
import pytest

import layerprop as lp
from conftest import (
    torch_loss,
    ACTIVATIONS,
    ELU_ALPHA,
    LEAKY_SLOPE,
    SOFTPLUS,
    LOSSES,
    OPTIMIZERS,
    assert_close,
    build_mlp,
    lp_optimizer,
    make_batch,
    mlp_acts,
)

TOL = {"float64": 1e-9, "float32": 1e-4}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def torch_twin(torch, model, sizes, act, final_act, dtype):
    """The nn.Sequential matching build_mlp(sizes, act, final_act), with model's parameters."""
    nn = torch.nn
    make = {
        "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE),
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "gelu": nn.GELU,
        "identity": nn.Identity,
        "silu": nn.SiLU,
        "elu": lambda: nn.ELU(alpha=ELU_ALPHA),
        "softplus": lambda: nn.Softplus(beta=SOFTPLUS[0], threshold=SOFTPLUS[1]),
    }
    layers = []
    for n_in, n_out, a in zip(sizes[:-1], sizes[1:], mlp_acts(len(sizes) - 1, act, final_act)):
        layers.append(nn.Linear(int(n_in), int(n_out)))
        if a is not None:
            layers.append(make[a]())
    net = nn.Sequential(*layers).to(getattr(torch, dtype))
    params = model.parameters()
    assert list(net.state_dict()) == list(params), "names differ from torch's state_dict"
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[name])))
    return net


def torch_optimizer(torch, key, net):
    cls, kw = OPTIMIZERS[key]
    return getattr(torch.optim, cls)(net.parameters(), **kw)


def random_architecture(key, loss):
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    depth = int(rng.integers(1, 5))
    sizes = [int(s) for s in rng.integers(1, 41, size=depth + 1)]
    if loss == "cross_entropy":
        sizes[-1] = max(sizes[-1], 2)
    batch = int(rng.integers(1, 34))
    return sizes, batch, depth == 1  # a lone Linear gets its activation after it


def assert_matches_torch(model, net, value, grads, tvalue, dtype, what):
    tol = TOL[dtype]
    assert abs(value - tvalue) <= tol * max(abs(tvalue), 1e-30), f"{what}: loss {value} vs {tvalue}"
    for name, p in net.named_parameters():
        assert grads[name].dtype == np.dtype(dtype)
        assert_close(grads[name], p.grad.numpy(), tol, f"{what}: grad {name}")


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_random_mlp_matches_torch(act, loss, opt, torch, rng):
    """Loss and every gradient against autograd, then 3 optimizer steps against torch.optim.

    float64: fully independent trajectories (train_step vs autograd + torch step).
    float32: torch steps on layerprop's own gradients (compute_gradients / gradients() /
    apply_gradients), so the update rule is compared on identical inputs. Independent float32
    trajectories are not a fair test: Adam's g / (|g| + eps) turns a rounding-level difference
    in a near-zero gradient entry into a parameter difference of up to lr.
    """
    sizes, batch, final_act = random_architecture(f"{act}-{loss}-{opt}", loss)
    for dtype in ("float64", "float32"):
        tol = TOL[dtype]
        model, _ = build_mlp(sizes, act, dtype=dtype, seed=int(rng.integers(2**31)), final_act=final_act)
        model.compile(loss=loss, optimizer=lp_optimizer(opt))
        net = torch_twin(torch, model, sizes, act, final_act, dtype)
        topt = torch_optimizer(torch, opt, net)
        for step in range(3):
            what = f"{dtype} sizes={sizes} batch={batch} step {step}"
            X, y = make_batch(rng, batch, sizes[0], sizes[-1], loss, dtype)
            value, grads = model.loss_and_grads(X, y)
            topt.zero_grad()
            tloss = torch_loss(torch, loss, net(torch.from_numpy(X)), y)
            tloss.backward()
            assert_matches_torch(model, net, value, grads, tloss.item(), dtype, what)

            if dtype == "float64":
                assert model.train_step(X, y) == pytest.approx(value, rel=tol)
            else:
                assert model.compute_gradients(X, y) == pytest.approx(value, rel=tol)
                used = model.gradients()
                for name, p in net.named_parameters():
                    assert_close(used[name], grads[name], tol, f"{what}: gradients() {name}")
                    p.grad = torch.from_numpy(np.array(used[name]))
                model.apply_gradients()
            topt.step()
            params = model.parameters()
            for name, p in net.named_parameters():
                assert_close(params[name], p.detach().numpy(), tol, f"{what}: param {name}")


@pytest.mark.parametrize("opt", ["sgd_momentum_dampening_wd", "adam"])
@pytest.mark.parametrize("loss", LOSSES)
def test_fit_equals_torch_loop_over_same_batches(loss, opt, torch, rng):
    sizes, n, batch_size, epochs = [6, 9, 4], 30, 7, 2  # 7 does not divide 30: last batch has 2
    model, _ = build_mlp(sizes, "tanh", dtype="float64", seed=4)
    model.compile(loss=loss, optimizer=lp_optimizer(opt))
    net = torch_twin(torch, model, sizes, "tanh", False, "float64")
    topt = torch_optimizer(torch, opt, net)
    X, y = make_batch(rng, n, sizes[0], sizes[-1], loss)

    history = model.fit(X, y, epochs=epochs, batch_size=batch_size, shuffle=False, progress=False)

    for _ in range(epochs):
        for start in range(0, n, batch_size):
            topt.zero_grad()
            sl = slice(start, start + batch_size)
            torch_loss(torch, loss, net(torch.from_numpy(X[sl])), y[sl]).backward()
            topt.step()
    assert len(history.history["loss"]) == epochs
    params = model.parameters()
    for name, p in net.named_parameters():
        assert_close(params[name], p.detach().numpy(), TOL["float64"], name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_same_parameters(dtype):
    def params(seed):
        model, _ = build_mlp([13, 20, 7], "relu", dtype=dtype, seed=seed)
        return model.parameters()

    a, b, c = params(123), params(123), params(124)
    assert list(a) == list(b) == list(c)
    for name in a:
        assert a[name].dtype == np.dtype(dtype)
        assert np.array_equal(a[name], b[name]), name
        assert not np.array_equal(a[name], c[name]), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_is_pytorch_default_uniform(dtype):
    fan_in, fan_out = 500, 400
    model = lp.Sequential(lp.Linear(fan_in, fan_out), lp.ReLU(), lp.Linear(fan_out, 3), dtype=dtype, seed=7)
    p = model.parameters()
    for layer, n_in in (("0", fan_in), ("2", fan_out)):
        bound = 1.0 / np.sqrt(n_in)
        for kind in ("weight", "bias"):
            v = np.asarray(p[f"{layer}.{kind}"], np.float64)
            assert np.all(np.abs(v) <= bound * (1 + 1e-6)), f"{layer}.{kind} outside ±1/sqrt(fan_in)"
            assert np.unique(v).size > 0.9 * v.size, f"{layer}.{kind} not random"

    w = np.asarray(p["0.weight"], np.float64).ravel()  # 200k draws of U(-b, b)
    bound = 1.0 / np.sqrt(fan_in)
    assert abs(w.std() - bound / np.sqrt(3)) <= 0.01 * bound / np.sqrt(3)
    assert abs(w.mean()) <= 0.01 * bound
    assert np.abs(w).max() >= 0.999 * bound
    quarters = np.histogram(w, bins=4, range=(-bound, bound))[0] / w.size
    assert np.all(np.abs(quarters - 0.25) <= 0.01), quarters
    b = np.asarray(p["0.bias"], np.float64)  # 400 draws
    assert abs(b.std() - bound / np.sqrt(3)) <= 0.15 * bound / np.sqrt(3)
