"""BatchNorm1d and LayerNorm against PyTorch: training and inference forward, backward,
running statistics, refusals."""

import numpy as np
import pytest

import layerprop as lp

torch = pytest.importorskip("torch")

NORMS = {"batchnorm": (lp.BatchNorm1d, torch.nn.BatchNorm1d), "layernorm": (lp.LayerNorm, torch.nn.LayerNorm)}


def _pair(kind, dtype, seed=1, **kw):
    Norm, TNorm = NORMS[kind]
    m = lp.Sequential(lp.Linear(7, 9), Norm(9, **kw), lp.Tanh(), lp.Linear(9, 3), dtype=dtype, seed=seed)
    t = torch.nn.Sequential(torch.nn.Linear(7, 9), TNorm(9, **kw), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    t = t.to(getattr(torch, dtype))
    rng = np.random.default_rng(seed)
    p = m.parameters()
    if "1.weight" in p:  # non-trivial affine parameters
        p["1.weight"][...] = rng.uniform(0.5, 1.5, 9)
        p["1.bias"][...] = rng.uniform(-0.5, 0.5, 9)
    with torch.no_grad():
        for name, tp in t.named_parameters():
            tp.copy_(torch.from_numpy(p[name]))
    return m, t


def _rel(a, b, floor=1e-3):
    return np.abs(a - b).max() / max(np.abs(b).max(), floor)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-4)])
@pytest.mark.parametrize("kind", sorted(NORMS))
def test_training_steps_match_torch(kind, dtype, tol):
    m, t = _pair(kind, dtype)
    m.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.1, momentum=0.9))
    opt = torch.optim.SGD(t.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(4):
        X = rng.standard_normal((13, 7)).astype(dtype)
        y = rng.integers(0, 3, 13)
        loss = m.train_step(X, y)
        opt.zero_grad()
        tl = torch.nn.functional.cross_entropy(t(torch.from_numpy(X)), torch.from_numpy(y))
        tl.backward()
        assert abs(loss - tl.item()) <= tol * abs(tl.item())
        for name, tp in t.named_parameters():
            # the bias before BatchNorm has a zero gradient: judged by absolute error
            assert _rel(m.gradients()[name], tp.grad.numpy()) <= tol, name
        opt.step()
        for name, tp in t.named_parameters():
            assert _rel(m.parameters()[name], tp.detach().numpy()) <= tol, name
    for name, buf in m.buffers().items():
        tb = dict(t.named_buffers())[name].numpy()
        assert _rel(buf, tb) <= tol, name
    # inference: running statistics
    t.eval()
    Xe = rng.standard_normal((6, 7)).astype(dtype)
    assert _rel(m.predict(Xe), t(torch.from_numpy(Xe)).detach().numpy()) <= tol


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_eval_mode_gradients_match_torch(kind):
    m, t = _pair(kind, "float64")
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    rng = np.random.default_rng(3)
    if kind == "batchnorm":  # non-trivial running statistics
        m.buffers()["1.running_mean"][...] = rng.standard_normal(9)
        m.buffers()["1.running_var"][...] = rng.uniform(0.5, 2.0, 9)
        with torch.no_grad():
            t[1].running_mean.copy_(torch.from_numpy(m.buffers()["1.running_mean"]))
            t[1].running_var.copy_(torch.from_numpy(m.buffers()["1.running_var"]))
    m.eval()
    t.eval()
    X, Y = rng.standard_normal((5, 7)), rng.standard_normal((5, 3))
    loss, grads = m.loss_and_grads(X, Y)
    tl = torch.nn.functional.mse_loss(t(torch.from_numpy(X)), torch.from_numpy(Y))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    for name, tp in t.named_parameters():
        assert _rel(grads[name], tp.grad.numpy()) <= 1e-10, name
    before = {k: v.copy() for k, v in m.buffers().items()}
    m.loss_and_grads(X, Y)
    assert all(np.array_equal(before[k], v) for k, v in m.buffers().items()), "eval mode must not update statistics"


def test_buffers_named_like_torch_and_zero_copy():
    m = lp.Sequential(lp.BatchNorm1d(4), lp.Linear(4, 3), lp.BatchNorm1d(3, affine=False), seed=0)
    t = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, affine=False))
    assert list(m.parameters()) == [n for n, _ in t.named_parameters()]
    assert list(m.buffers()) == [n for n, _ in t.named_buffers() if not n.endswith("num_batches_tracked")]
    assert np.array_equal(m.buffers()["0.running_var"], np.ones(4))
    assert np.array_equal(m.buffers()["2.running_mean"], np.zeros(3))
    m.buffers()["0.running_mean"][...] = 5.0
    assert m.buffers()["0.running_mean"][0] == 5.0
    m.compile(loss="mse")
    X = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    m.train_step(X, np.zeros((8, 3), np.float32))
    assert not np.array_equal(m.buffers()["2.running_var"], np.ones(3))


def test_batch_of_one_refused_and_model_unchanged():
    m = lp.Sequential(lp.Linear(3, 4), lp.BatchNorm1d(4), lp.Linear(4, 2), seed=0)
    m.compile(loss="mse", optimizer=lp.Adam())
    params = {k: v.copy() for k, v in m.parameters().items()}
    bufs = {k: v.copy() for k, v in m.buffers().items()}
    for call in (m.train_step, m.compute_gradients, m.loss_and_grads):
        with pytest.raises(ValueError, match="X.*BatchNorm1d.*1"):
            call(np.ones((1, 3), np.float32), np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(np.ones((5, 3), np.float32), np.ones((5, 2), np.float32), batch_size=4, progress=False)
    assert all(np.array_equal(params[k], v) for k, v in m.parameters().items())
    assert m.predict(np.ones((1, 3), np.float32)).shape == (1, 2)  # inference takes 1 sample
    m.eval()
    m.train_step(np.ones((1, 3), np.float32), np.ones((1, 2), np.float32))  # eval mode too
    assert all(np.array_equal(bufs[k], v) for k, v in m.buffers().items())


def test_bad_norm_arguments():
    for bad in (dict(num_features=0), dict(num_features=3, eps=0), dict(num_features=3, momentum=1.5)):
        with pytest.raises(ValueError, match=next(iter(k for k in bad if k != "num_features"), "num_features")):
            lp.BatchNorm1d(**bad)
    with pytest.raises(ValueError, match="expects 4 input features"):
        lp.Sequential(lp.Linear(3, 5), lp.LayerNorm(4))


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_norm_results_independent_of_thread_count(kind):
    Norm = NORMS[kind][0]
    old = lp.get_num_threads()
    try:
        runs = []
        for nt in (1, 2):
            lp.set_num_threads(nt)
            m = lp.Sequential(lp.Linear(300, 512), Norm(512), lp.ReLU(), lp.Linear(512, 10), seed=2)
            m.compile(loss="cross_entropy", optimizer=lp.Adam())
            X = np.random.default_rng(1).standard_normal((256, 300)).astype(np.float32)
            y = np.arange(256) % 10
            losses = [m.train_step(X, y) for _ in range(3)]
            runs.append((losses, [v.copy() for v in m.parameters().values()], [v.copy() for v in m.buffers().values()]))
        assert runs[0][0] == runs[1][0]
        for a, b in zip(runs[0][1] + runs[0][2], runs[1][1] + runs[1][2]):
            assert np.array_equal(a, b)
    finally:
        lp.set_num_threads(old)


def test_loss_and_grads_leaves_running_statistics_alone():
    m = lp.Sequential(lp.Linear(5, 8), lp.BatchNorm1d(8), lp.Tanh(), lp.Linear(8, 3), seed=0)
    m.compile(loss="mse", optimizer=lp.SGD(lr=0.1))
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((16, 5)).astype(np.float32), rng.standard_normal((16, 3)).astype(np.float32)
    for _ in range(3):
        m.train_step(X, Y)
    before = {k: v.copy() for k, v in m.buffers().items()}
    m.loss_and_grads(X + 1, Y)
    assert all(np.array_equal(before[k], v) for k, v in m.buffers().items())
    m.compute_gradients(X + 1, Y)  # the first half of a training step does move them
    assert not np.array_equal(before["1.running_mean"], m.buffers()["1.running_mean"])
