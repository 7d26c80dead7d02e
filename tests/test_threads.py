"""Results are bitwise identical for any thread count; thread-count API and build_info."""

import numpy as np
import pytest

import layerprop as lp
from conftest import build_mlp, make_batch


@pytest.fixture
def restore_threads():
    before = lp.get_num_threads()
    yield
    lp.set_num_threads(before)


def train_run(threads, sizes, batch, dtype, loss, optimizer):
    lp.set_num_threads(threads)
    assert lp.get_num_threads() == threads
    rng = np.random.default_rng(42)
    model, _ = build_mlp(sizes, "relu", dtype=dtype, seed=3)
    model.compile(loss=loss, optimizer=optimizer)
    losses = []
    for _ in range(4):
        X, y = make_batch(rng, batch, sizes[0], sizes[-1], loss, dtype)
        losses.append(model.train_step(X, y))
    value, grads = model.loss_and_grads(X, y)
    return losses + [value], grads, model.predict(X), {k: v.copy() for k, v in model.parameters().items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "sizes, batch, loss, opt",
    [
        ([64, 128, 128, 10], 64, "cross_entropy", lambda: lp.SGD(lr=0.05, momentum=0.9)),
        ([256, 512, 10], 256, "mse", lambda: lp.Adam(lr=1e-3)),
    ],
    ids=["64-128-128-10", "256-512-10"],
)
def test_one_and_two_threads_bitwise_equal(sizes, batch, loss, opt, dtype, restore_threads):
    one = train_run(1, sizes, batch, dtype, loss, opt())
    two = train_run(2, sizes, batch, dtype, loss, opt())
    assert one[0] == two[0], "losses differ"
    for a, b in zip(one[1:], two[1:]):
        if isinstance(a, dict):
            assert list(a) == list(b)
            for name in a:
                assert np.array_equal(a[name], b[name]), name
        else:
            assert np.array_equal(a, b), "predict differs"
    assert one[0][0] != one[0][-1], "training did not move: test is vacuous"


@pytest.mark.parametrize("n", [2, 1])
def test_get_num_threads_returns_what_was_set(n, restore_threads):
    lp.set_num_threads(n)
    assert lp.get_num_threads() == n
    assert lp.build_info()["num_threads"] == n


def test_build_info_keys():
    info = lp.build_info()
    assert isinstance(info, dict)
    assert {"version", "simd", "openmp", "num_threads", "compiler"} <= set(info)
    assert isinstance(info["version"], str) and info["version"]
    assert isinstance(info["simd"], str) and info["simd"]
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["num_threads"], int) and info["num_threads"] >= 1
    assert isinstance(info["compiler"], str) and info["compiler"]
