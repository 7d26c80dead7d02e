"""Cases for tests/test_distributed.py, run under `mpiexec -n N python tests/mpi_cases.py CASE [ARGS]`.
Rank 0 prints one JSON line prefixed "RESULT " with what the test asserts on; the references
(one process given the whole batch) are computed on rank 0 after the distributed run."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

import layerprop as lp
from layerprop import distributed as D

ctx = D.init()
rank, size = ctx.rank, ctx.size


def out(obj):
    if rank == 0:
        print("RESULT " + json.dumps(obj), flush=True)


def schedules():
    return {"simultaneous": lambda: None,
            "top_down": lambda: lp.Layerwise(order="top_down"),
            "bottom_up": lambda: lp.Layerwise(order="bottom_up"),
            "locoprop_S": lambda: lp.LocoProp(variant="S", inner_steps=3, inner_lr=0.002),
            "locoprop_M": lambda: lp.LocoProp(variant="M", inner_steps=3, inner_lr=0.002)}


def optimizers():
    return {"sgd": lambda: lp.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "adam": lambda: lp.Adam(lr=1e-3),
            "adamw": lambda: lp.AdamW(lr=1e-3, weight_decay=0.05),
            "rmsprop": lambda: lp.RMSprop(lr=1e-3, momentum=0.5, centered=True),
            "adagrad": lambda: lp.Adagrad(lr=0.05, lr_decay=1e-3)}


def mlp(seed=3, bn=False, out=4, inp=12):
    layers = [lp.Linear(inp, 16)]
    if bn:
        layers.append(lp.BatchNorm1d(16))
    layers += [lp.Tanh(), lp.Linear(16, 16), lp.ReLU(), lp.Linear(16, out)]
    return lp.Sequential(*layers, seed=seed, dtype="float64")


def data(n, loss="cross_entropy", out=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 12))
    if loss == "cross_entropy":
        y = rng.integers(0, out, n)
    elif loss == "bce_with_logits":
        y = (rng.random((n, out)) < 0.4).astype(np.float64)
    else:
        y = rng.standard_normal((n, out))
    return X, y


def maxdiff(a, b):
    return float(max(np.max(np.abs(x - z)) for x, z in zip(a.parameters().values(), b.parameters().values())))


def same_on_all_ranks(model):
    c = float(D.parameters_checksum(model))
    bufs = [float(np.sum(b)) for b in model.buffers().values()]
    lo = ctx.allreduce([c] + bufs, "min")
    hi = ctx.allreduce([c] + bufs, "max")
    return bool(np.array_equal(lo, hi))


def case_equivalence(batch="30", steps="20"):
    """Every schedule x optimizer (and, for Simultaneous, every loss and sample weights):
    N ranks with global batch B vs one process with batch B."""
    B, S = int(batch), int(steps)
    res = {}
    combos = [(s, o, "cross_entropy", False) for s in schedules() for o in optimizers()]
    combos += [("simultaneous", "adam", loss, False) for loss in ("mse", "bce_with_logits")]
    combos += [(s, "sgd", "cross_entropy", True) for s in ("simultaneous", "top_down", "locoprop_S")]
    for sname, oname, loss, weighted in combos:
        if os.environ.get("MPI_CASES_DEBUG"):
            print(rank, sname, oname, loss, weighted, flush=True)
        X, y = data(B * S, loss)
        w = np.random.default_rng(9).uniform(0.2, 3.0, B * S) if weighted else None
        m = mlp()
        m.compile(loss=loss, optimizer=optimizers()[oname](), schedule=schedules()[sname](), distributed=True)
        losses = []
        for s in range(S):
            mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
            losses.append(m.train_step(X[mine], y[mine], None if w is None else w[mine]))
        equal = same_on_all_ranks(m)
        if rank == 0:
            ref = mlp()
            ref.compile(loss=loss, optimizer=optimizers()[oname](), schedule=schedules()[sname]())
            ref_losses = [ref.train_step(X[s * B:(s + 1) * B], y[s * B:(s + 1) * B],
                                         None if w is None else w[s * B:(s + 1) * B]) for s in range(S)]
            res[f"{sname}/{oname}/{loss}/{'w' if weighted else '-'}"] = {
                "params": maxdiff(m, ref), "loss": float(np.max(np.abs(np.array(losses) - ref_losses))),
                "ranks_equal": equal}
    out(res)


def case_compute_apply():
    """compute_gradients + apply_gradients in a user's loop; gradients are the whole batch's."""
    B = 24
    X, y = data(B * 5)
    m = mlp()
    m.compile(optimizer=lp.Adam(lr=1e-2), distributed=True)
    gs = []
    for s in range(5):
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        m.compute_gradients(X[mine], y[mine])
        gs.append({k: v.copy() for k, v in m.gradients().items()})
        m.apply_gradients()
    if rank == 0:
        ref = mlp()
        ref.compile(optimizer=lp.Adam(lr=1e-2))
        gd = 0.0
        for s in range(5):
            ref.compute_gradients(X[s * B:(s + 1) * B], y[s * B:(s + 1) * B])
            gd = max(gd, max(float(np.max(np.abs(ref.gradients()[k] - gs[s][k]))) for k in gs[s]))
            ref.apply_gradients()
        out({"grads": gd, "params": maxdiff(m, ref)})


def case_batchnorm():
    """Per-rank batch statistics: equal to one process that computes each rank's part's
    gradient separately and averages them; running statistics are rank 0's on every rank."""
    B, S = 32, 10
    X, y = data(B * S)
    m = mlp(bn=True)
    m.compile(optimizer=lp.SGD(lr=0.1, momentum=0.9), distributed=True)
    for s in range(S):
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        m.train_step(X[mine], y[mine])
    equal = same_on_all_ranks(m)
    if rank == 0:
        ref = mlp(bn=True)
        ref.compile(optimizer=lp.SGD(lr=0.1, momentum=0.9))
        whole = mlp(bn=True)  # one process with the whole batch: BatchNorm sees all B rows
        whole.compile(optimizer=lp.SGD(lr=0.1, momentum=0.9))
        for s in range(S):
            rows = np.arange(s * B, (s + 1) * B)
            parts = [D.share(type("C", (), {"rank": r, "size": size})(), rows) for r in range(size)]
            acc = None
            for r in reversed(range(size)):  # rank 0's part last: its running statistics stay
                if r == 0:
                    ref.compute_gradients(X[parts[r]], y[parts[r]])
                    g = ref.gradients()
                else:
                    _, g = ref.loss_and_grads(X[parts[r]], y[parts[r]])
                wr = len(parts[r]) / B
                acc = {k: wr * v.copy() for k, v in g.items()} if acc is None else {k: acc[k] + wr * g[k] for k in acc}
            for k, v in ref.gradients().items():
                v[...] = acc[k]
            ref.apply_gradients()
            whole.train_step(X[rows], y[rows])
        bd = float(max(np.max(np.abs(a - b)) for a, b in zip(m.buffers().values(), ref.buffers().values())))
        out({"params": maxdiff(m, ref), "buffers": bd, "ranks_equal": equal, "vs_whole_batch": maxdiff(m, whole)})


def case_fit():
    """fit: shuffled batches split over the ranks, validation reduced, rank-0 checkpoints."""
    import tempfile
    n, B = 200, 32
    X, y = data(n)
    Xv, yv = data(50, seed=5)
    m = mlp()
    m.compile(optimizer=lp.Adam(lr=1e-2), distributed=True)
    tmp = tempfile.mkdtemp() if rank == 0 else None
    tmp = ctx.comm.bcast(tmp, root=0)
    ck = lp.ModelCheckpoint(os.path.join(tmp, f"r{rank}_e{{epoch}}.safetensors"))
    h = m.fit(X, y, epochs=3, batch_size=B, validation_data=(Xv, yv), callbacks=[ck], progress=False)
    saved = ctx.comm.gather(len(ck.saved), root=0)
    hist = ctx.comm.gather(h.history, root=0)
    if rank == 0:
        ref = mlp()
        ref.compile(optimizer=lp.Adam(lr=1e-2))
        hr = ref.fit(X, y, epochs=3, batch_size=B, validation_data=(Xv, yv), progress=False)
        out({"params": maxdiff(m, ref), "saved": saved,
             "history": {k: float(np.max(np.abs(np.array(h.history[k]) - hr.history[k]))) for k in hr.history},
             "history_same_on_ranks": all(x == hist[0] for x in hist), "files": sorted(os.listdir(tmp))})


def case_nonfinite(step="4"):
    """Rank 1's targets overflow the loss at one step: every rank raises at that step and keeps
    the parameters of the step before."""
    k = int(step)
    B = 16
    X, y = data(B * 8, "mse")
    m = mlp()
    m.compile(loss="mse", optimizer=lp.Adam(lr=1e-2), distributed=True)
    raised_at, before = None, None
    for s in range(8):
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        yb = y[mine].copy()
        if s == k and rank == 1:
            yb[0, 0] = 1e200  # finite, but its square is not
        snap = [p.copy() for p in m.parameters().values()]
        try:
            m.train_step(X[mine], yb)
        except lp.NonFiniteError:
            raised_at = s
            before = all(np.array_equal(a, b) for a, b in zip(snap, m.parameters().values()))
            break
    res = ctx.comm.gather((raised_at, before, same_on_all_ranks(m)), root=0)
    out({"ranks": res})


def case_refused():
    """Rank 1's labels are out of range at step 2: rank 1 raises its ValueError, the others a
    ValueError naming rank 1; nothing changed, and training goes on."""
    B = 16
    X, y = data(B * 6)
    m = mlp()
    m.compile(optimizer=lp.SGD(lr=0.1), distributed=True)
    msgs = []
    for s in range(6):
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        yb = y[mine].copy()
        if s == 2 and rank == 1:
            yb[0] = 99
        c0 = D.parameters_checksum(m)
        try:
            m.train_step(X[mine], yb)
        except ValueError as e:
            msgs.append((s, str(e), D.parameters_checksum(m) == c0))
    res = ctx.comm.gather(msgs, root=0)
    out({"ranks": res, "ranks_equal": same_on_all_ranks(m)})


def case_die(how="exit"):
    """Rank 1 dies (os._exit) or raises an uncaught error at step 3."""
    B = 16
    X, y = data(B * 50)
    m = mlp()
    m.compile(optimizer=lp.SGD(lr=0.1), distributed=True)
    for s in range(50):
        if s == 3 and rank == 1:
            if how == "exit":
                os._exit(3)
            raise RuntimeError("rank 1 fails on purpose")
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        m.train_step(X[mine], y[mine])
    out({"finished": True})


def case_checkpoint(phase, path, steps="10"):
    """One leg of 2 ranks -> 1 -> 2: load (or build) the model, train `steps` global batches of
    24 rows from where the file says, save from rank 0."""
    S, B = int(steps), 24
    X, y = data(B * 40)
    if phase == "start":
        m = mlp()
        m.compile(optimizer=lp.RMSprop(lr=1e-2, momentum=0.5), distributed=True)
        done = 0
    else:
        m = lp.load(path)
        D.attach(m)
        done = int(np.load(path + ".step.npy"))
    for s in range(done, done + S):
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        m.train_step(X[mine], y[mine])
    if rank == 0:
        m.save(path)
        np.save(path + ".step.npy", np.array(done + S))
        if phase == "check":
            ref = mlp()
            ref.compile(optimizer=lp.RMSprop(lr=1e-2, momentum=0.5))
            for s in range(done + S):
                ref.train_step(X[s * B:(s + 1) * B], y[s * B:(s + 1) * B])
            out({"params": maxdiff(m, ref), "steps": done + S})
        else:
            out({"steps": done + S})


def case_repro():
    """The parameters' checksum after a fixed run (compared across two runs by the test)."""
    B = 30
    X, y = data(B * 10)
    m = mlp()
    m.compile(optimizer=lp.Adam(lr=1e-2), schedule=lp.LocoProp(variant="M", inner_steps=2), distributed=True)
    for s in range(10):
        mine = D.share(ctx, np.arange(s * B, (s + 1) * B))
        m.train_step(X[mine], y[mine])
    out({"checksum": D.parameters_checksum(m)})


def case_scale():
    """At MNIST size: 60,000 x 784 float32, one epoch of fit at batch 600 split over the ranks,
    against one process (float32: summation order differs, so a tolerance, not 1e-12)."""
    rng = np.random.default_rng(0)
    X = rng.random((60000, 784), dtype=np.float32)
    y = rng.integers(0, 10, 60000)

    def build():
        return lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=1)

    m = build()
    m.compile(optimizer=lp.Adam(lr=1e-3), distributed=True)
    h = m.fit(X, y, epochs=1, batch_size=600, progress=False)
    equal = same_on_all_ranks(m)
    if rank == 0:
        ref = build()
        ref.compile(optimizer=lp.Adam(lr=1e-3))
        hr = ref.fit(X, y, epochs=1, batch_size=600, progress=False)
        out({"params": maxdiff(m, ref), "loss": abs(h.history["loss"][0] - hr.history["loss"][0]),
             "ranks_equal": equal, "loss_value": h.history["loss"][0]})


def case_threads():
    out({"threads": ctx.threads, "lp": lp.get_num_threads(), "local_size": ctx.local_size,
         "cpus": len(os.sched_getaffinity(0)), "size": size})


if __name__ == "__main__":
    globals()["case_" + sys.argv[1]](*sys.argv[2:])
