"""Data-parallel training on MPI through mpi4py (docs/distributed.md).

    import layerprop as lp
    ctx = lp.distributed.init()            # MPI.COMM_WORLD; threads per rank = cores / ranks on the node
    model = lp.Sequential(lp.Linear(784, 512), lp.ReLU(), lp.Linear(512, 10), seed=0)
    model.compile(loss="cross_entropy", optimizer=lp.Adam(), distributed=True)
    model.fit(X, y, epochs=5, batch_size=256)   # every rank passes the same X, y; each trains on its part

    mpiexec -n 4 python train.py

Every rank computes gradients on its part of each batch; the gradients are averaged over the
ranks with one all-reduce over the parameter store's flat gradient buffer (zero-copy), and every
rank applies the same update, so N ranks given the parts of a batch of B rows end with the
parameters one process gets from the whole batch. Parameters, optimizer state, the shuffling
generator and BatchNorm running statistics start from rank 0's.

- Simultaneous: one all-reduce per step. Layerwise: one per layer tensor per step (each layer's
  gradient is recomputed after the layers before it moved). LocoProp: one per layer before the
  targets are built and one per Linear tensor and inner step.
- BatchNorm normalizes with each rank's own batch statistics (PyTorch's default under
  DistributedDataParallel, not SyncBatchNorm); its running statistics are rank 0's, copied to
  every rank after each step.
- Dropout masks: each rank draws from its own stream (the model's seed mixed with the rank).
- A training call is collective: every rank must make it, in the same order. A rank whose
  input is refused makes every rank raise (a ValueError naming that rank) instead of leaving
  the others waiting; a non-finite loss or gradient on any rank stops every rank at the same
  step with the last good parameters. An exception nobody catches aborts the whole job
  (MPI_Abort) after printing it, so no rank is left waiting.
- predict and evaluate stay local (no communication); fit's validation metrics are reduced.
"""
from __future__ import annotations

import os
import sys
import warnings
import zlib
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["Context", "init", "context", "attach", "detach", "threads_per_rank"]

_CTX: Optional["Context"] = None
_HOOKED = False


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("lp.distributed needs mpi4py and an MPI library: pip install 'layerprop[mpi]' "
                          f"(installs mpi4py and MPICH) ({e})") from None
    return MPI


class Context:
    """One process's place in the job: `rank`, `size`, the communicator `comm`, the ranks on this
    node (`local_rank`, `local_size`) and the core threads this rank uses (`threads`)."""

    def __init__(self, comm: Any, threads: int) -> None:
        MPI = _mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        self.local_size = local.Get_size()
        local.Free()
        self.threads = threads

    def __repr__(self) -> str:
        return (f"Context(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
                f"local_size={self.local_size}, threads={self.threads})")

    # The reducer the core calls (set_reducer): in place, zero-copy views of the core's buffers.
    def _sum(self, a: np.ndarray) -> None:
        self.comm.Allreduce(_mpi().IN_PLACE, a, op=_mpi().SUM)

    def _bcast(self, a: np.ndarray) -> None:
        self.comm.Bcast(a, root=0)

    def allreduce(self, values, op: str = "sum") -> np.ndarray:
        """float64 values reduced over the ranks ("sum", "min" or "max"); the same on every rank."""
        a = np.array(values, dtype=np.float64).ravel()
        MPI = _mpi()
        self.comm.Allreduce(MPI.IN_PLACE, a, op={"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}[op])
        return a


def threads_per_rank(local_size: int) -> int:
    """Core threads for one of `local_size` ranks on a node, so ranks x threads never exceed the
    cores: OMP_NUM_THREADS if set; else the cores this process may run on, divided by the ranks
    on the node (a launcher that binds each rank to its own cores is taken at its word)."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.strip().isdigit() and int(env) > 0:
        return int(env)
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        mine = os.cpu_count() or 1
    node = os.cpu_count() or mine
    if mine < node:  # bound by the launcher: these cores are this rank's
        return max(1, mine)
    return max(1, mine // max(1, local_size))


def _install_abort_hook(ctx: Context) -> None:
    global _HOOKED
    if _HOOKED or ctx.size < 2:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        try:
            sys.stderr.write(f"layerprop: rank {ctx.rank} of {ctx.size} failed; aborting every rank\n")
            previous(kind, value, tb)
            sys.stderr.flush()
        finally:
            ctx.comm.Abort(1)

    sys.excepthook = hook
    _HOOKED = True


def resolve_comm(comm: Any) -> Any:
    """The communicator `comm` names: None or True -> MPI.COMM_WORLD; an mpi4py communicator as
    it is; anything else a TypeError."""
    MPI = _mpi()
    if comm is None or comm is True:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm: expected an mpi4py communicator (or True for MPI.COMM_WORLD), got {comm!r:.80}")
    return comm


def init(comm: Any = None, *, threads: Optional[int] = None, abort_on_error: bool = True) -> Context:
    """Join the job: `comm` an mpi4py communicator (default MPI.COMM_WORLD). Sets this rank's
    core threads (`threads`, default :func:`threads_per_rank`) and, with `abort_on_error`, an
    exception hook that aborts every rank when one ends with an uncaught exception. Returns the
    Context; calling it again returns the same one (for the same communicator)."""
    global _CTX
    MPI = _mpi()
    comm = resolve_comm(comm)
    if _CTX is not None and _CTX.comm == comm and threads is None:
        return _CTX
    from . import set_num_threads, validation
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    n_local = local.Get_size()
    local.Free()
    nt = threads_per_rank(n_local) if threads is None else validation.integer(threads, "threads", 1)
    set_num_threads(nt)
    ctx = Context(comm, nt)
    if abort_on_error:
        _install_abort_hook(ctx)
    if _CTX is None or _CTX.comm == comm:
        _CTX = ctx
    return ctx


def context() -> Optional[Context]:
    """The Context of :func:`init`, or None before it."""
    return _CTX


def _rank_seed(seed: int, rank: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + 1) % (1 << 64) if rank else seed


def attach(model: Any, comm: Any = None) -> Context:
    """Make every training call of `model` data-parallel over `comm` (default: init()'s, or
    MPI.COMM_WORLD), keeping its compiled state: rank 0's parameters, BatchNorm statistics,
    optimizer state and step counts, and shuffling generator are copied to every rank. For a
    model loaded from a checkpoint (any number of ranks wrote it): `lp.distributed.attach(lp.load(path))`."""
    model._require_compiled()
    ctx = init(comm) if comm is not None and comm is not True else (_CTX or init())
    # Everything that must be equal on every rank: rank 0's.
    model._dist_sync(lambda a: ctx.comm.Bcast(a, root=0), lambda obj: ctx.comm.bcast(obj if ctx.rank == 0 else None, root=0),
                     lambda seed: _rank_seed(seed, ctx.rank))
    model._dist_attach(ctx)
    return ctx


def detach(model: Any) -> None:
    """Back to one process: training calls no longer communicate."""
    model._dist_attach(None)


# ------------------------------------------------------------------ collective checks
def agree(ctx: Context, error: Optional[BaseException], what: str) -> None:
    """Every rank learns whether any rank failed to prepare its part of a collective call; if
    one did, every rank raises (the failing rank its own error), so none waits for the others."""
    flags = ctx.allreduce([0.0 if error is None else 1.0 + ctx.rank], "max")
    if flags[0] == 0:
        return
    if error is not None:
        raise error
    raise ValueError(f"{what}: rank {int(flags[0]) - 1} refused its data (its error is raised there); "
                     "every rank stops this call")


def parameters_checksum(model: Any) -> int:
    crc = 0
    for arr in model.parameters().values():
        crc = zlib.crc32(np.ascontiguousarray(arr).tobytes(), crc)
    return crc


def check_in_step(ctx: Context, model: Any, when: str) -> None:
    """Raise on every rank if the ranks' parameters are not bitwise equal."""
    c = float(parameters_checksum(model))
    lo, hi = ctx.allreduce([c], "min")[0], ctx.allreduce([c], "max")[0]
    if lo != hi:
        raise RuntimeError(f"{when}: the ranks' parameters differ (checksums {int(lo)} to {int(hi)}); "
                           "a rank changed its model outside the collective calls")


# ------------------------------------------------------------------ fit's pieces
def share(ctx: Context, rows: np.ndarray) -> np.ndarray:
    """This rank's part of a batch's rows: np.array_split's, contiguous and in order."""
    n = len(rows)
    lo = ctx.rank * (n // ctx.size) + min(ctx.rank, n % ctx.size)
    hi = lo + n // ctx.size + (1 if ctx.rank < n % ctx.size else 0)
    return rows[lo:hi]


def train_batches(model: Any, X: Any, y: np.ndarray, order: np.ndarray, batch_size: int, policy: int,
                  w: Optional[np.ndarray]) -> Tuple[np.ndarray, int, int, int, int]:
    """fit's batches on this rank: the same global batches as one process, each split over the
    ranks; returns what Model._train_batches returns, with every batch's loss the global one."""
    from . import NonFiniteError
    from .sparse import take_rows
    ctx = model._distributed()
    n = len(order)
    nb = (n + batch_size - 1) // batch_size
    losses = np.full(nb, np.nan)
    skipped = 0
    for b in range(nb):
        rows = order[b * batch_size:(b + 1) * batch_size]
        if len(rows) < ctx.size:  # a rank would get no rows: every rank skips it
            if not getattr(model, "_dist_warned_small", False):
                warnings.warn(f"fit: a batch of {len(rows)} rows has fewer rows than the {ctx.size} ranks and is "
                              "skipped on every rank (choose batch_size and the data size so the last batch has "
                              "at least one row per rank)", RuntimeWarning, stacklevel=4)
                model._dist_warned_small = True
            skipped += 1
            continue
        mine = share(ctx, rows)
        Xb = take_rows(X, mine)
        yb = y[mine]
        try:
            losses[b] = model._train_step_prepared(Xb, yb, None if w is None else w[mine])
        except NonFiniteError as e:
            kind = 1 if "loss is not finite" in str(e) else 2
            if policy == 1:
                skipped += 1
                continue
            return losses, b, skipped, b, kind
    return losses, nb, skipped, -1, 0


def evaluate(model: Any, X: Any, y: np.ndarray, batch_size: int) -> Tuple[float, float, float]:
    """(loss, correct, total) over every rank's part of (X, y), the same on every rank."""
    from .sparse import take_rows
    ctx = model._distributed()
    mine = share(ctx, np.arange(y.shape[0], dtype=np.int64))
    if len(mine):
        loss, correct, total = model._evaluate_prepared(take_rows(X, mine), y[mine], batch_size, None, local=True)
    else:
        loss, correct, total = 0.0, 0.0, 0.0
    s = ctx.allreduce([loss * total, correct, total])
    return (s[0] / s[2] if s[2] > 0 else float("nan")), s[1], s[2]
