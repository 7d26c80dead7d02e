"""Whole training loops with no Python between steps: our core's epoch loop (what `fit` runs)
against JAX's jit over lax.scan (where JAX is installed), on the reference models' batches.

JAX runs in this process with its default thread pool (every CPU); `layerprop bench` compares
the two at 1 and 2 threads, JAX in a child process confined to that many CPUs. Each benchmark
times one call of a loop of `STEPS` steps; both sides start from the same parameters on the
same batches, and the test checks their losses agree."""

import numpy as np
import pytest

from benchutil import run
from layerprop.bench import jaxpeer

KEYS = ["T32", "S", "M", "L"]
STEPS = {"T32": 200, "S": 100, "M": 10, "L": 2}


@pytest.mark.parametrize("impl", ["layerprop", "jax"])
@pytest.mark.parametrize("key", KEYS)
def test_train_loop(benchmark, key, impl):
    steps = STEPS[key]
    benchmark.group = f"loop {key} x{steps}"
    ours = jaxpeer.loop_case(key, steps)
    first = ours()
    if impl == "jax":
        pytest.importorskip("jax")
        fn, jax_first = jaxpeer.jax_loop_case(key, steps)
        np.testing.assert_allclose(jax_first, first, rtol=5e-4)
    else:
        fn = ours
    run(benchmark, fn, big=key == "L")
    last = fn()
    assert np.all(np.isfinite(last)) and np.mean(last) < np.mean(first)
