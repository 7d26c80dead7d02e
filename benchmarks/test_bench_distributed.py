"""Data-parallel training steps: the M and L models as 2 MPI ranks x 1 thread (each rank half of
the batch, gradients all-reduced), launched with mpiexec, in one group with the all-reduce of
the models' parameter counts. Skipped without mpi4py or an MPI launcher. `python
benchmarks/distributed.py --markdown` prints the comparison with 1 process x 1 and 2 threads
and the cluster projection (docs/distributed.md)."""

import shutil

import pytest

pytest.importorskip("mpi4py")
if not (shutil.which("mpiexec") or shutil.which("mpirun")):
    pytest.skip("no MPI launcher on PATH (pip install 'layerprop[mpi]')", allow_module_level=True)

from layerprop.bench.distributed import MODELS, launch, num_params  # noqa: E402


def test_two_ranks_train_m_and_l(benchmark):
    benchmark.group = "distributed 2 ranks x 1 thread"
    out = {}

    def once():
        out.update(launch(2, 0.05))

    benchmark.pedantic(once, rounds=1, iterations=1)
    assert out["size"] == 2
    assert set(out["steps"]) == set(MODELS) and all(t > 0 for t in out["steps"].values())
    # the all-reduce grows with the message: the largest (64 MiB) is slower than the smallest
    times = [out["allreduce"][k] for k in sorted(out["allreduce"], key=int)]
    assert times[-1] > times[0] > 0
    assert num_params("M") == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
