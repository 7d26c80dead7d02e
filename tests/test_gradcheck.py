"""Central finite differences in float64 on whole small models, through the writable views."""

import numpy as np
import pytest

import layerprop as lp
from conftest import ACTIVATIONS, LOSSES, assert_close, build_mlp, lp_activation, make_batch

EPS = 1e-6
TOL = 1e-6


def finite_difference_grads(model, X, y):
    """d loss / d p for every entry p of every parameter, perturbing the views in place."""
    fd = {}
    for name, p in model.parameters().items():
        g = np.empty_like(p)
        for i in np.ndindex(p.shape):
            orig = p[i]
            p[i] = orig + EPS
            up, _ = model.loss_and_grads(X, y)
            p[i] = orig - EPS
            down, _ = model.loss_and_grads(X, y)
            p[i] = orig
            g[i] = (up - down) / (2 * EPS)
        fd[name] = g
    return fd


def check(model, X, y):
    before = {k: v.copy() for k, v in model.parameters().items()}
    loss, grads = model.loss_and_grads(X, y)
    fd = finite_difference_grads(model, X, y)
    assert list(fd) == list(grads)
    for name in grads:
        assert np.any(fd[name] != 0), f"{name}: finite differences all zero, test is vacuous"
        assert_close(grads[name], fd[name], TOL, name)
    # every entry was restored exactly, and the loss with it
    for name, p in model.parameters().items():
        assert np.array_equal(p, before[name]), name
    assert model.loss_and_grads(X, y)[0] == loss


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_gradcheck_three_layers(act, loss, rng):
    model, _ = build_mlp([4, 6, 5, 3], act, dtype="float64", seed=11)
    model.compile(loss=loss, optimizer=lp.SGD(lr=0.1))
    X, y = make_batch(rng, 7, 4, 3, loss)
    check(model, X, y)


@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck_output_activation_and_no_bias(loss, rng):
    model = lp.Sequential(
        lp.Linear(3, 5, bias=False),
        lp_activation("gelu"),
        lp.Linear(5, 4),
        lp_activation("sigmoid"),
        dtype="float64",
        seed=5,
    )
    assert list(model.parameters()) == ["0.weight", "2.weight", "2.bias"]
    model.compile(loss=loss, optimizer=lp.SGD(lr=0.1))
    X, y = make_batch(rng, 6, 3, 4, loss)
    check(model, X, y)
