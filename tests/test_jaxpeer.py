"""The JAX peer of the benchmarks (layerprop.bench.jaxpeer): it must compute what our core's
loop computes, from the same start on the same batches, or its timings compare nothing."""
import os
import subprocess
import sys

import numpy as np
import pytest

from layerprop.bench import MODELS, jaxpeer


def test_loop_case_runs_the_core_epoch_and_learns():
    case = jaxpeer.loop_case("T32", steps=30)
    losses = case()
    assert losses.shape == (30,) and np.all(np.isfinite(losses))
    again = jaxpeer.loop_case("T32", steps=30)()
    np.testing.assert_array_equal(losses, again)        # same seed, same data: same bits
    assert np.mean(case()) < np.mean(losses)   # a second pass over the same batches: lower


def test_loop_data_shapes_follow_the_spec():
    for key in ("S", "L"):
        spec = MODELS[key]
        X, y = jaxpeer.loop_data(key, 3)
        assert X.shape == (3 * spec.batch, spec.sizes[0]) and X.dtype == np.float32
        if spec.loss == "cross_entropy":
            assert y.shape == (3 * spec.batch,) and y.max() < spec.sizes[-1]
        else:
            assert y.shape == (3 * spec.batch, spec.sizes[-1])


def test_child_cpus_confines_fewer_threads_than_cpus():
    allowed = sorted(os.sched_getaffinity(0))
    assert jaxpeer.child_cpus(len(allowed)) == []
    assert jaxpeer.child_cpus(len(allowed) + 3) == []
    if len(allowed) > 1:
        assert jaxpeer.child_cpus(1) == allowed[:1]


def test_run_jax_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="key"):
        jaxpeer.run_jax("XL", 1)


def test_child_refuses_bad_arguments():
    p = subprocess.run([sys.executable, "-m", "layerprop.bench.jaxpeer", "--key", "S", "--steps", "-1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--steps" in p.stderr


@pytest.mark.parametrize("key", ["T32", "S", "M", "L"])
def test_jax_loop_matches_our_loop(key):
    """JAX's compiled loop from our initial parameters gives our losses step by step (float32
    rounding apart): the same network, loss and PyTorch update rule (SGD, momentum, Adam)."""
    pytest.importorskip("jax")
    steps = 2 if key == "L" else 8
    res = jaxpeer.run_jax(key, 1, steps=steps, reps=1)
    ours = jaxpeer.loop_case(key, steps)()
    assert res.first_losses.shape == ours.shape == (steps,)
    np.testing.assert_allclose(res.first_losses, ours, rtol=2e-4)
    assert len(res.times) == 1 and res.times[0] > 0 and res.compile_s > 0
    if key != "L":   # the losses move: a frozen JAX state would still match the first step only
        assert not np.allclose(ours[0], ours[1:])


def test_compare_reports_times_and_agreement():
    pytest.importorskip("jax")
    ours, res, rel = jaxpeer.compare("T32", 1, reps=2, steps=10)
    assert len(ours) == 2 and all(t > 0 for t in ours)
    assert res.median > 0 and rel < 1e-4


def test_without_jax_the_peer_says_how_to_install(monkeypatch):
    monkeypatch.setattr(jaxpeer, "available", lambda: False)
    with pytest.raises(RuntimeError, match=r"layerprop\[jax\]"):
        jaxpeer.run_jax("S", 1)
    from layerprop.bench import harness
    assert harness._jax_rows("S", 1, 100.0, harness.QUICK) == []   # the bench skips the rows


def test_a_child_that_dies_raises_with_its_message():
    pytest.importorskip("jax")
    with pytest.raises(RuntimeError, match=r"--steps"):
        jaxpeer.JaxChild("S", 1, steps=-1)


def test_the_child_serves_calls_until_closed():
    pytest.importorskip("jax")
    with jaxpeer.JaxChild("T32", 1, steps=5) as child:
        times = [child.time_one() for _ in range(3)]
        assert all(t > 0 for t in times) and child.result().times == times
    assert child._p.returncode == 0        # finished on "quit", not killed
