"""model.to_torch() and lp.from_torch(module): exact round trips, same outputs, clear errors."""

import sys

import numpy as np
import pytest

import layerprop as lp

torch = pytest.importorskip("torch")
nn = torch.nn


def all_layers(dtype="float32", seed=0):
    return lp.Sequential(lp.Linear(6, 8), lp.LeakyReLU(0.2), lp.Linear(8, 8, bias=False), lp.GELU(),
                         lp.Dropout(0.25), lp.Linear(8, 7), lp.Tanh(), lp.Linear(7, 5), lp.Sigmoid(),
                         lp.Identity(), lp.ReLU(), lp.Linear(5, 3), dtype=dtype, seed=seed)


def X_of(dtype, n=16):
    return np.random.default_rng(1).standard_normal((n, 6)).astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_torch_matches_layers_parameters_and_outputs(dtype):
    model = all_layers(dtype)
    tm = model.to_torch()
    assert isinstance(tm, nn.Sequential) and len(tm) == 12
    assert [type(m).__name__ for m in tm] == ["Linear", "LeakyReLU", "Linear", "GELU", "Dropout", "Linear",
                                              "Tanh", "Linear", "Sigmoid", "Identity", "ReLU", "Linear"]
    assert tm[1].negative_slope == 0.2 and tm[3].approximate == "none" and tm[4].p == 0.25
    assert tm[2].bias is None
    sd = tm.state_dict()
    assert list(sd) == list(model.parameters())
    for k, v in model.parameters().items():
        assert sd[k].dtype == (torch.float32 if dtype == "float32" else torch.float64)
        assert np.array_equal(sd[k].numpy(), v), k
    assert tm.training == model.training
    tm.eval()
    X = X_of(dtype)
    with torch.no_grad():
        out = tm(torch.from_numpy(X)).numpy()
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, model.predict(X), rtol=tol, atol=tol)


def test_to_torch_is_a_copy():
    model = all_layers()
    tm = model.to_torch()
    with torch.no_grad():
        tm[0].weight.zero_()
    assert model.parameters()["0.weight"].any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_lp_torch_lp_is_bitwise(dtype):
    model = all_layers(dtype).eval()
    back = lp.from_torch(model.to_torch())
    assert back.dtype == dtype and not back.training
    assert back.summary() == model.summary()
    for (k, v), (k2, v2) in zip(model.parameters().items(), back.parameters().items()):
        assert k == k2 and np.array_equal(v, v2)
    X = X_of(dtype)
    assert np.array_equal(model.predict(X), back.predict(X))


def test_round_trip_torch_lp_torch_and_training_agree():
    torch.manual_seed(0)
    tm = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).double()
    model = lp.from_torch(tm, seed=0)
    assert model.dtype == "float64" and list(model.parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    again = model.to_torch()
    for k, v in tm.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    # One SGD step in each agrees to rounding.
    X = X_of("float64")
    y = np.arange(16) % 3
    model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.1))
    model.train_step(X, y)
    opt = torch.optim.SGD(tm.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(tm(torch.from_numpy(X)), torch.from_numpy(y))
    loss.backward()
    opt.step()
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(model.parameters()[k], v.numpy(), rtol=1e-12, atol=1e-14)


def test_names_other_than_positions_are_kept():
    from collections import OrderedDict
    tm = nn.Sequential(OrderedDict([("enc", nn.Linear(6, 4)), ("act", nn.Tanh()), ("head", nn.Linear(4, 2))]))
    model = lp.from_torch(tm)
    assert list(model.parameters()) == ["enc.weight", "enc.bias", "head.weight", "head.bias"]
    assert model._seq_layers[1].name == "act"
    assert list(model.to_torch().state_dict()) == list(tm.state_dict())
    assert [n for n, _ in model.to_torch().named_children()] == ["enc", "act", "head"]


@pytest.mark.parametrize("bad, name", [
    (lambda: nn.Conv1d(1, 1, 3), "Conv1d"),
    (lambda: nn.Softmax(dim=1), "Softmax"),
    (lambda: nn.Sequential(nn.ReLU()), "Sequential"),
    (lambda: nn.BatchNorm2d(4), "BatchNorm2d"),
])
def test_unsupported_torch_layer_is_named(bad, name):
    tm = nn.Sequential(nn.Linear(6, 4), bad(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match=rf"module\[1\].*{name}.*supported: Linear"):
        lp.from_torch(tm)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_and_layernorm_with_running_statistics(dtype):
    X = X_of(dtype, n=32)
    model = lp.Sequential(lp.Linear(6, 8), lp.BatchNorm1d(8, momentum=0.3), lp.ReLU(), lp.LayerNorm(8, eps=1e-4),
                          lp.Linear(8, 5), lp.BatchNorm1d(5, affine=False), lp.Linear(5, 2), dtype=dtype, seed=0)
    model.compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    y = np.random.default_rng(2).standard_normal((32, 2)).astype(dtype)
    for _ in range(3):
        model.train_step(X, y)  # moves weights and running statistics away from their init
    assert not np.all(model.buffers()["1.running_var"] == 1)
    tm = model.to_torch()
    assert type(tm[1]) is nn.BatchNorm1d and tm[1].momentum == 0.3 and tm[5].affine is False
    assert type(tm[3]) is nn.LayerNorm and tm[3].eps == 1e-4
    sd = tm.state_dict()
    for k, v in {**model.parameters(), **model.buffers()}.items():
        assert np.array_equal(sd[k].numpy(), v), k
    tm.eval()
    tol = 1e-5 if dtype == "float32" else 1e-12
    with torch.no_grad():
        np.testing.assert_allclose(tm(torch.from_numpy(X)).numpy(), model.predict(X), rtol=tol, atol=tol)
    # One training-mode forward pass updates the running statistics alike in both.
    tm.train()
    twin = lp.from_torch(tm).compile(loss="mse", optimizer=lp.SGD(lr=0.0))
    assert twin.training and list(twin.buffers()) == list(model.buffers())
    with torch.no_grad():
        tm(torch.from_numpy(X))
    twin.compute_gradients(X, y)
    for k, v in twin.buffers().items():
        np.testing.assert_allclose(v, tm.state_dict()[k].numpy(), rtol=tol, atol=tol, err_msg=k)
        assert not np.array_equal(v, model.buffers()[k]), k
    again = lp.from_torch(model.to_torch())
    for k, v in {**model.parameters(), **model.buffers()}.items():
        assert np.array_equal({**again.parameters(), **again.buffers()}[k], v), k


@pytest.mark.parametrize("bad, match", [
    (lambda: nn.BatchNorm1d(3, momentum=None), "momentum"),
    (lambda: nn.BatchNorm1d(3, track_running_stats=False), "track_running_stats"),
    (lambda: nn.LayerNorm(3, elementwise_affine=False), "elementwise_affine"),
    (lambda: nn.LayerNorm((3, 3)), "last dimension"),
])
def test_unsupported_norm_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        lp.from_torch(nn.Sequential(nn.Linear(3, 3), bad()))


def test_gelu_tanh_approximation_is_refused():
    with pytest.raises(ValueError, match="approximate"):
        lp.from_torch(nn.Sequential(nn.Linear(3, 3), nn.GELU(approximate="tanh")))


def test_subclass_of_a_supported_layer_is_refused():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2
    with pytest.raises(TypeError, match="MyLinear"):
        lp.from_torch(nn.Sequential(MyLinear(3, 3)))


@pytest.mark.parametrize("module, exc, match", [
    (lambda: nn.Linear(3, 3), TypeError, "torch.nn.Sequential"),
    (lambda: nn.Sequential(nn.Linear(3, 3)).half(), ValueError, "float32 or float64"),
    (lambda: nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3).double()), ValueError, "mixed"),
    (lambda: nn.Sequential(), ValueError, "empty"),
    (lambda: nn.Sequential(nn.ReLU()), ValueError, "Linear"),
])
def test_bad_modules(module, exc, match):
    with pytest.raises(exc, match=match):
        lp.from_torch(module())


def test_graph_models_are_refused_by_to_torch():
    x = lp.Input(3)
    model = lp.Model(x, lp.add(lp.Linear(3, 3)(x), x))
    with pytest.raises(TypeError, match="Sequential"):
        model.to_torch()


def test_without_torch_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"layerprop\[torch\]"):
        all_layers().to_torch()
