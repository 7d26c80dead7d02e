"""Data-parallel training on MPI (lp.distributed, docs/distributed.md). Each test runs a case of
tests/mpi_cases.py under `mpiexec -n 2` on this machine and checks what rank 0 reports against
one process given the whole batch (float64). Skipped, with the reason, where mpi4py or an MPI
launcher is missing: `pip install 'layerprop[mpi]'` installs both."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import layerprop as lp

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "mpi_cases.py")

try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_MPI4PY = False
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpirun")
pytestmark = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                                reason="needs mpi4py and an MPI launcher (pip install 'layerprop[mpi]')")


def run(case, *args, n=2, expect_ok=True, timeout=240):
    cmd = ([MPIEXEC, "-n", str(n)] if n > 1 else []) + [sys.executable, CASES, case, *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if expect_ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        assert len(lines) == 1, r.stdout[-3000:]
        return json.loads(lines[0][len("RESULT "):])
    return r


@pytest.mark.parametrize("batch", [30, 31], ids=["equal-parts", "unequal-parts"])
def test_ranks_match_one_process_for_every_schedule_and_optimizer(batch):
    res = run("equivalence", batch, 20 if batch == 30 else 6)
    # 5 schedules x 5 optimizers, mse and bce_with_logits, sample weights for 3 schedules
    assert len(res) == 30
    for name, r in res.items():
        assert r["params"] < 1e-12, name
        assert r["loss"] < 1e-12, name
        assert r["ranks_equal"], name


def test_compute_gradients_gives_the_whole_batchs_gradient():
    r = run("compute_apply")
    assert r["grads"] < 1e-12 and r["params"] < 1e-12


def test_batchnorm_uses_each_ranks_statistics_and_rank_0s_running_ones():
    r = run("batchnorm")
    # equal to averaging the parts' gradients, each normalized with its own statistics ...
    assert r["params"] < 1e-12 and r["buffers"] < 1e-12 and r["ranks_equal"]
    # ... which is not one process normalizing the whole batch (not vacuous)
    assert r["vs_whole_batch"] > 1e-6


def test_fit_splits_batches_reduces_metrics_and_checkpoints_from_rank_0():
    r = run("fit")
    assert r["params"] < 1e-12
    assert all(v < 1e-12 for v in r["history"].values()), r["history"]
    assert r["history_same_on_ranks"]
    assert r["saved"] == [3, 0]
    assert r["files"] == ["r0_e1.safetensors", "r0_e2.safetensors", "r0_e3.safetensors"]


def test_a_nonfinite_step_on_one_rank_stops_every_rank_with_the_last_good_parameters():
    r = run("nonfinite", 4)
    assert r["ranks"] == [[4, True, True], [4, True, True]]


def test_a_refused_batch_on_one_rank_raises_on_every_rank_and_changes_nothing():
    r = run("refused")
    rank0, rank1 = r["ranks"]
    assert len(rank0) == len(rank1) == 1
    assert rank0[0][0] == rank1[0][0] == 2
    assert "rank 1 refused its data" in rank0[0][1]
    assert "y: class label 99" in rank1[0][1]
    assert rank0[0][2] and rank1[0][2]
    assert r["ranks_equal"]


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_rank_that_dies_or_raises_ends_the_job_without_a_hang(how):
    r = run("die", how, expect_ok=False, timeout=120)
    assert r.returncode != 0
    assert "RESULT" not in r.stdout
    if how == "raise":
        assert "rank 1 of 2 failed; aborting every rank" in r.stderr
        assert "rank 1 fails on purpose" in r.stderr


def test_checkpoints_resume_on_another_number_of_ranks(tmp_path):
    path = str(tmp_path / "ck.safetensors")
    assert run("checkpoint", "start", path, n=2)["steps"] == 10
    assert run("checkpoint", "mid", path, n=1)["steps"] == 20
    r = run("checkpoint", "check", path, n=2)
    assert r["steps"] == 30 and r["params"] < 1e-12


def test_mnist_sized_fit_matches_one_process():
    r = run("scale")
    assert r["ranks_equal"]
    assert np.isfinite(r["loss_value"]) and r["loss_value"] < np.log(10) + 0.1
    # float32, 100 Adam steps: the sums run in another order, so the parameters agree to
    # rounding, not bit for bit
    assert r["params"] < 1e-4 and r["loss"] < 1e-5


def test_runs_are_bitwise_reproducible():
    assert run("repro")["checksum"] == run("repro")["checksum"]


def test_ranks_times_threads_never_exceed_the_cores():
    r = run("threads")
    assert r["size"] == 2 and r["local_size"] == 2
    assert r["threads"] == r["lp"] == max(1, r["cpus"] // 2)


# ------------------------------------------------------------------ in this process (1 rank)
def test_one_rank_is_one_process():
    from mpi4py import MPI
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64)
    a = lp.Sequential(lp.Linear(5, 8), lp.ReLU(), lp.Linear(8, 3), seed=1, dtype="float64")
    b = lp.Sequential(lp.Linear(5, 8), lp.ReLU(), lp.Linear(8, 3), seed=1, dtype="float64")
    a.compile(optimizer=lp.Adam(lr=1e-2), distributed=MPI.COMM_SELF)
    b.compile(optimizer=lp.Adam(lr=1e-2))
    assert a._core.distributed and not b._core.distributed
    ha = a.fit(X, y, epochs=2, batch_size=16, progress=False)
    hb = b.fit(X, y, epochs=2, batch_size=16, progress=False)
    assert ha.history["loss"] == pytest.approx(hb.history["loss"], rel=1e-13)
    for p, q in zip(a.parameters().values(), b.parameters().values()):
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-14)
    a.compile(optimizer=lp.Adam(lr=1e-2))  # compiling without `distributed` ends it
    assert not a._core.distributed and a._dist is None


def test_distributed_arguments_are_checked():
    m = lp.Sequential(lp.Linear(3, 2), seed=0)
    m.compile(optimizer=lp.Adam())
    m.train_step(np.ones((4, 3), np.float32), np.array([0, 1, 0, 1]))
    steps = m._core.steps()
    adam = {k: v["exp_avg"].copy() for k, v in m.optimizer_state().items()}
    with pytest.raises(TypeError, match="comm: expected an mpi4py communicator"):
        m.compile(distributed="yes")
    assert m._core.steps() == steps  # not recompiled: the optimizer state is kept
    assert all(np.array_equal(v["exp_avg"], adam[k]) for k, v in m.optimizer_state().items())
    with pytest.raises(TypeError, match="set_reducer"):
        m._core.set_reducer(1, 2, 3)
    from mpi4py import MPI
    m.compile(loss="mse", distributed=MPI.COMM_SELF)
    # fit needs a row of every batch for every rank: a job of 4 ranks refuses batch_size=2
    # before anything changes
    ctx = m._dist
    m._dist = type("FourRanks", (), {"size": 4, "rank": 0})()
    before = [p.copy() for p in m.parameters().values()]
    with pytest.raises(ValueError, match="batch_size: 2 is less than the 4 ranks"):
        m.fit(np.ones((8, 3)), np.ones((8, 2)), batch_size=2, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.parameters().values()))
    m._dist = ctx
