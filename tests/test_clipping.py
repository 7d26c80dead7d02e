"""Gradient clipping inside the core (compile(clip_grad_norm=, clip_grad_value=)) against
PyTorch's clip_grad_norm_ and clamp_, and its refusals."""
from __future__ import annotations

import numpy as np
import pytest

import layerprop as lp


def model(dtype="float64", **clip):
    m = lp.Sequential(lp.Linear(6, 16), lp.Tanh(), lp.Linear(16, 3), dtype=dtype, seed=3)
    return m.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.5, momentum=0.9), **clip)


def data(n=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6)) * 4, rng.integers(0, 3, n)


@pytest.mark.parametrize("clip", [dict(clip_grad_norm=0.05), dict(clip_grad_value=0.01),
                                  dict(clip_grad_norm=0.05, clip_grad_value=0.01), dict(clip_grad_norm=1e3)])
def test_clipping_matches_pytorch(clip):
    torch = pytest.importorskip("torch")
    X, y = data()
    m = model(**clip)
    t = m.to_torch().double()
    opt = torch.optim.SGD(t.parameters(), lr=0.5, momentum=0.9)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(5):
        m.train_step(X, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(t(Xt), yt).backward()
        if "clip_grad_value" in clip:
            for p in t.parameters():
                p.grad.clamp_(-clip["clip_grad_value"], clip["clip_grad_value"])
        if "clip_grad_norm" in clip:
            torch.nn.utils.clip_grad_norm_(t.parameters(), clip["clip_grad_norm"])
        opt.step()
    ours = list(m.parameters().values())
    for a, b in zip(ours, t.parameters()):
        assert np.allclose(a, b.detach().numpy(), rtol=1e-12, atol=1e-13)
    # gradients() shows the clipped gradients that were applied
    g = np.concatenate([v.ravel() for v in m.gradients().values()])
    if "clip_grad_value" in clip:
        assert np.abs(g).max() <= clip["clip_grad_value"]
    if "clip_grad_norm" in clip:
        assert np.linalg.norm(g) <= clip["clip_grad_norm"] + 1e-9


def test_clipping_actually_clips_and_loss_and_grads_stays_raw():
    X, y = data()
    m = model(clip_grad_norm=1e-3)
    _, raw = m.loss_and_grads(X, y)
    norm = np.sqrt(sum(float((g ** 2).sum()) for g in raw.values()))
    assert norm > 1e-2  # clipping has work to do
    p0 = {k: v.copy() for k, v in m.parameters().items()}
    m.train_step(X, y)
    step = np.sqrt(sum(float(((m.parameters()[k] - p0[k]) ** 2).sum()) for k in p0))
    assert step == pytest.approx(0.5 * 1e-3, rel=1e-3)  # lr x clipped norm (first momentum step)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_clip_values_are_refused_and_change_nothing(bad):
    m = model()
    before = {k: v.copy() for k, v in m.parameters().items()}
    for name in ("clip_grad_norm", "clip_grad_value"):
        with pytest.raises(ValueError, match=name):
            m.compile(loss="cross_entropy", **{name: bad})
    assert m.clip_grad_norm is None and m.loss == "cross_entropy"
    for k, v in m.parameters().items():
        assert np.array_equal(v, before[k])


def test_clipping_is_for_the_simultaneous_schedule():
    m = model()
    with pytest.raises(ValueError, match="Simultaneous"):
        m.compile(schedule=lp.Layerwise(), clip_grad_norm=1.0)


def test_clipping_settings_are_saved(tmp_path):
    pytest.importorskip("safetensors")
    X, y = data()
    a = model(clip_grad_norm=0.05, clip_grad_value=0.02)
    a.train_step(X, y)
    a.save(tmp_path / "m.safetensors")
    b = lp.load(tmp_path / "m.safetensors")
    assert (b.clip_grad_norm, b.clip_grad_value) == (0.05, 0.02)
    a.train_step(X, y)
    b.train_step(X, y)
    for k, v in a.parameters().items():
        assert np.array_equal(v, b.parameters()[k])
