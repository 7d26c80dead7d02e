"""layerprop's pool next to threadpoolctl, NumPy's BLAS and PyTorch: OpenMP's limit (which
threadpoolctl sets) caps it, lp.set_num_threads is honoured, and pools do not leak into each
other.

Worker threads are counted in a fresh interpreter from /proc/self/task: the pool keeps its
workers alive afterwards, so the count after training is the pool size that was used."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import layerprop as lp

threadpoolctl = pytest.importorskip("threadpoolctl")

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
needs_two = pytest.mark.skipif(lp.get_num_threads() < 2 or not lp.build_info()["openmp"],
                               reason="needs an OpenMP build running with at least 2 threads")

PRELUDE = """
import json, os, sys
import numpy as np
import layerprop as lp
def nthreads():
    return len(os.listdir("/proc/self/task"))
def train(schedule=None, width=512):
    m = lp.Sequential(lp.Linear(width, width), lp.ReLU(), lp.Linear(width, width), lp.ReLU(),
                      lp.Linear(width, 10), seed=0)
    m.compile(optimizer=lp.SGD(lr=0.01), schedule=schedule)
    rng = np.random.default_rng(0)
    X = rng.random((512, width), dtype=np.float32)
    y = rng.integers(0, 10, 512)
    losses = [m.train_step(X, y) for _ in range(2)]
    return losses, m.predict(X)
base = nthreads()
"""


def run_py(body):
    code = PRELUDE + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_threadpoolctl_lists_the_openmp_runtime_layerprop_uses():
    info = threadpoolctl.threadpool_info()
    omp = [d for d in info if d["user_api"] == "openmp"]
    if not lp.build_info()["openmp"]:
        pytest.skip("single-threaded build")
    assert omp, info
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            mapped = {os.path.realpath(ln.split()[-1]) for ln in f if "libgomp" in ln or "libomp" in ln}
        assert mapped & {os.path.realpath(d["filepath"]) for d in omp}


@linux_only
@needs_two
def test_default_run_uses_a_worker_pool():
    # Not vacuous: without limits a training step does start workers.
    out = run_py("""
        train()
        print(json.dumps({"base": base, "after": nthreads(), "lp": lp.get_num_threads()}))
    """)
    assert out["after"] >= out["base"] + 1


@linux_only
@needs_two
def test_set_num_threads_one_starts_no_worker():
    out = run_py("""
        lp.set_num_threads(1)
        train()
        print(json.dumps({"base": base, "after": nthreads()}))
    """)
    assert out["after"] == out["base"]


@linux_only
@needs_two
def test_threadpoolctl_limit_caps_layerprop():
    out = run_py("""
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="openmp"):
            train()
        print(json.dumps({"base": base, "after": nthreads()}))
    """)
    assert out["after"] == out["base"]


@linux_only
@needs_two
def test_nested_parallelism_stays_within_the_thread_count():
    # LocoProp solves the layers' problems as one pool job; the kernels inside it run
    # serially, so the pool never exceeds lp.get_num_threads() threads.
    if not hasattr(lp, "LocoProp"):
        pytest.skip("no LocoProp schedule in this build")
    out = run_py("""
        lp.set_num_threads(2)
        train(schedule=lp.LocoProp(variant="M", inner_steps=3), width=256)
        print(json.dumps({"base": base, "after": nthreads()}))
    """)
    assert out["base"] + 1 <= out["after"] <= out["base"] + 1


def test_results_do_not_depend_on_a_threadpoolctl_limit():
    def run():
        m = lp.Sequential(lp.Linear(256, 256), lp.ReLU(), lp.Linear(256, 4), seed=1)
        m.compile(loss="mse", optimizer=lp.Adam(lr=1e-3))
        rng = np.random.default_rng(0)
        X = rng.random((256, 256), dtype=np.float32)
        y = rng.random((256, 4), dtype=np.float32)
        return [m.train_step(X, y) for _ in range(3)], m.predict(X)
    free = run()
    with threadpoolctl.threadpool_limits(limits=1):
        limited = run()
    assert free[0] == limited[0] and np.array_equal(free[1], limited[1])


def test_blas_pool_untouched_and_openmp_limits_honoured():
    before = lp.get_num_threads()
    blas = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    try:
        lp.set_num_threads(1)
        # NumPy's BLAS pool is its own: layerprop's setting does not leak into it ...
        assert [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"] == blas
        lp.set_num_threads(2)
        # ... nor does a BLAS limit change layerprop's count.
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            assert lp.get_num_threads() == 2
        if lp.build_info()["openmp"] and not os.environ.get("OMP_NUM_THREADS"):
            # An OpenMP limit from outside (threadpoolctl, or torch.set_num_threads when torch
            # shares the OpenMP runtime) caps layerprop for as long as it holds. (A limit equal
            # to OpenMP's initial one, OMP_NUM_THREADS=1 here, cannot be told from none.)
            with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
                assert lp.get_num_threads() == 1
            assert lp.get_num_threads() == 2
    finally:
        lp.set_num_threads(before)
