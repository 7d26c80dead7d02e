"""JAX as a peer: the reference models' training loop compiled whole (jax.jit over lax.scan).

This is the strongest CPU peer for small work: XLA fuses the step and the loop runs with no
Python between steps. The fair comparison on our side is the core's epoch loop (what `fit`
runs), so both sides take the same K batches, from the same initial parameters, with the same
optimizer rules (PyTorch's SGD, momentum and Adam), and both report the loss of every step.

JAX is optional (`pip install 'layerprop[jax]'`). XLA sizes its thread pool from the CPUs the
process may use when it starts, so every thread count runs in a child process confined to that
many CPUs (`JaxChild`; `python -m layerprop.bench.jaxpeer --key S --cpus 0` serves one model:
a JSON line once compiled, then one timed call per "run" line on stdin). Nothing here imports
JAX into the calling process, where it would bring a third thread pool.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np

from .specs import MODELS, OPTIMIZERS

PEER = "JAX jit+scan"
# Steps per compiled loop: enough that one call lasts 10 ms or more on either side, well above
# timer and dispatch noise. Each call follows a settle() sleep, which costs the call that
# follows a little (T b32 at 400 steps, 80 interleaved pairs: 2% slower after a 30 ms sleep);
# longer calls spread that over more steps, on both sides.
STEPS = {"T1": 5000, "T32": 2000, "S": 200, "M": 20, "L": 3}
CHECKED_STEPS = 400  # losses compared between the two sides (compare)


def available() -> bool:
    """Whether JAX can be imported (without importing it here)."""
    return importlib.util.find_spec("jax") is not None


def loop_data(key: str, steps: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """`steps` batches of reference model `key`, stacked: X (steps*batch, in), y."""
    from .twins import batch
    spec = MODELS[key]
    return batch(spec, seed + 1, rows=spec.batch * steps)


@dataclass
class LoopCase:
    """Our side: the core's epoch loop over the batches of `loop_data` (no Python per step)."""
    key: str
    steps: int
    model: Any
    X: np.ndarray
    y: np.ndarray

    def __call__(self) -> np.ndarray:
        order = np.arange(self.X.shape[0], dtype=np.int64)
        losses, done, _skipped, _fb, fault = self.model._train_batches(  # fit's loop
            self.X, self.y, order, MODELS[self.key].batch, 0, None)
        if done != self.steps or fault:
            raise RuntimeError(f"{self.key}: the epoch stopped after {done} of {self.steps} steps")
        return losses


def loop_case(key: str, steps: Optional[int] = None, seed: int = 0) -> LoopCase:
    from .twins import build_model
    spec = MODELS[key]
    steps = steps or STEPS[key]
    model = build_model(spec.sizes, spec.loss, spec.optimizer, seed=seed)
    X, y = loop_data(key, steps, seed)
    return LoopCase(key, steps, model, X, y)


# --------------------------------------------------------------------------------------------
# The JAX side (runs in the child process).

def _jax_loop(key: str, params: Any) -> Tuple[Any, Any]:
    """(epoch, state): epoch(state, Xs, ys) -> (state, losses) compiled with jit over lax.scan."""
    import jax
    import jax.numpy as jnp

    spec = MODELS[key]
    _cls, kw = OPTIMIZERS[spec.optimizer]
    lr = kw["lr"]
    n_layers = len(params)

    def forward(ps, x):
        for i, (w, b) in enumerate(ps):
            x = x @ w.T + b
            if i < n_layers - 1:
                x = jnp.maximum(x, 0.0)
        return x

    if spec.loss == "cross_entropy":
        def loss_fn(ps, x, y):
            z = forward(ps, x)
            logp = jax.nn.log_softmax(z, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
    else:
        def loss_fn(ps, x, y):
            return jnp.mean((forward(ps, x) - y) ** 2)

    grad_fn = jax.value_and_grad(loss_fn)

    def zeros():  # a new buffer each call: donated state must not alias
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    state0: Tuple[Any, ...]
    if spec.optimizer == "sgd":
        state0 = (params,)

        def update(state, g):
            (ps,) = state
            return (jax.tree_util.tree_map(lambda p, d: p - lr * d, ps, g),)
    elif spec.optimizer == "sgd_momentum":
        mu = kw["momentum"]
        state0 = (params, zeros())

        def update(state, g):  # PyTorch: buf = mu buf + g (buf = g at the first step), p -= lr buf
            ps, buf = state
            buf = jax.tree_util.tree_map(lambda m, d: mu * m + d, buf, g)
            return (jax.tree_util.tree_map(lambda p, m: p - lr * m, ps, buf), buf)
    else:
        b1, b2, eps = 0.9, 0.999, 1e-8
        state0 = (params, zeros(), zeros(), jnp.zeros((), jnp.float32))

        def update(state, g):  # PyTorch's Adam: p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
            ps, m, v, t = state
            t = t + 1.0
            m = jax.tree_util.tree_map(lambda a, d: b1 * a + (1 - b1) * d, m, g)
            v = jax.tree_util.tree_map(lambda a, d: b2 * a + (1 - b2) * d * d, v, g)
            step = lr / (1 - b1 ** t)
            root_bc2 = jnp.sqrt(1 - b2 ** t)
            ps = jax.tree_util.tree_map(lambda p, a, c: p - step * a / (jnp.sqrt(c) / root_bc2 + eps), ps, m, v)
            return (ps, m, v, t)

    def body(state, xy):
        x, y = xy
        loss, g = grad_fn(state[0], x, y)
        return update(state, g), loss

    def epoch(state, Xs, ys):
        return jax.lax.scan(body, state, (Xs, ys))

    return jax.jit(epoch, donate_argnums=(0,)), state0


def jax_loop_case(key: str, steps: int, seed: int = 0):
    """(run, first_losses): run() makes one call of JAX's compiled loop over the same batches as
    `loop_case(key, steps, seed)`, from our model's initial parameters, and returns the loop's
    losses; first_losses are those of the first call (which also compiles). Imports JAX."""
    import jax
    import jax.numpy as jnp

    case = loop_case(key, steps, seed)     # our model, for its initial parameters and the data
    spec = MODELS[key]
    params_np = case.model.parameters()
    params = [(jnp.asarray(np.array(params_np[f"{2 * i}.weight"])), jnp.asarray(np.array(params_np[f"{2 * i}.bias"])))
              for i in range(len(spec.layers))]
    b = spec.batch
    Xs = jnp.asarray(case.X.reshape(steps, b, spec.sizes[0]))
    ys = jnp.asarray(case.y.reshape((steps, b) if spec.loss == "cross_entropy" else (steps, b, spec.sizes[-1])))
    epoch, state0 = _jax_loop(key, params)
    holder = [state0]

    def run() -> np.ndarray:
        holder[0], losses = epoch(holder[0], Xs, ys)
        return np.asarray(jax.block_until_ready(losses), dtype=np.float64)

    return run, run()


def _serve(key: str, steps: int, seed: int) -> None:
    """The child: compile, say so with one JSON line, then time one call of the loop per "run"
    line read from stdin (printing seconds per step), until "quit" or end of input."""
    import jax

    from .timing import settle
    t0 = time.perf_counter()
    run, first_losses = jax_loop_case(key, steps, seed)
    compile_s = time.perf_counter() - t0
    print(json.dumps({"key": key, "steps": steps, "first_losses": first_losses.tolist(),
                      "compile_s": compile_s, "jax": jax.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        run()
        t = (time.perf_counter() - t0) / steps
        settle()   # answer once XLA's workers have stopped spinning: they would share the
        print(repr(t), flush=True)   # CPUs with the parent's next call


def child_cpus(threads: int) -> List[int]:
    """The CPUs the child is confined to so that XLA runs `threads` threads. XLA's CPU backend
    sizes its pool from the CPUs it may use and has no flag that caps it (measured:
    --xla_cpu_multi_thread_eigen=false still runs a 1024^2 matmul on two cores), so fewer
    threads than CPUs means an affinity mask. [] means no mask."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return allowed[:threads] if 0 < threads < len(allowed) else []


@dataclass
class JaxResult:
    key: str
    threads: int
    steps: int
    times: List[float]          # seconds per step, one per timed call of the compiled loop
    first_losses: np.ndarray    # the losses of the first call, from our initial parameters
    compile_s: float
    version: str

    @property
    def median(self) -> float:
        return float(np.median(self.times))


class JaxChild:
    """JAX's compiled loop for reference model `key`, in a child process on `threads` threads,
    timed one call at a time (`time_one`), so that its calls can alternate with ours."""

    def __init__(self, key: str, threads: int, steps: Optional[int] = None, seed: int = 0,
                 timeout: float = 600.0) -> None:
        if key not in MODELS:
            raise ValueError(f"key: expected one of {sorted(MODELS)}, got {key!r}")
        if not available():
            raise RuntimeError("JAX is not installed: pip install 'layerprop[jax]'")
        self.key, self.threads, self.steps = key, threads, steps or STEPS[key]
        cmd = [sys.executable, "-m", "layerprop.bench.jaxpeer", "--key", key, "--steps", str(self.steps),
               "--seed", str(seed)]
        cpus = child_cpus(threads)
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS=str(threads))
        self._timeout = timeout
        self._p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, bufsize=1)
        head = self._line()
        try:
            d = json.loads(head)
        except ValueError:
            self._fail(f"unexpected first line {head!r}")
        self.first_losses = np.asarray(d["first_losses"], dtype=np.float64)
        self.compile_s = float(d["compile_s"])
        self.version = str(d["jax"])
        self.times: List[float] = []

    @property
    def pid(self) -> int:
        return int(self._p.pid)

    def _line(self) -> str:
        import selectors
        assert self._p.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._p.stdout, selectors.EVENT_READ)
            if not sel.select(self._timeout):
                self._fail(f"no answer within {self._timeout:.0f} s")
        line = self._p.stdout.readline()
        if not line:
            self._fail("it exited")
        return line.strip()

    def _fail(self, why: str) -> None:
        if self._p.poll() is None:
            self._p.kill()
        self._p.wait()
        err = self._p.stderr.read() if self._p.stderr is not None else ""
        self.close()
        raise RuntimeError(f"the JAX child failed ({why}, exit {self._p.returncode}): {err.strip()[-2000:]}")

    def time_one(self) -> float:
        """Seconds per step of one call of the compiled loop."""
        assert self._p.stdin is not None
        self._p.stdin.write("run\n")
        self._p.stdin.flush()
        t = float(self._line())
        self.times.append(t)
        return t

    def close(self) -> None:
        """Ask the child to finish (kill it if it does not within 10 s) and close the pipes."""
        if self._p.poll() is None:
            try:
                if self._p.stdin is not None and not self._p.stdin.closed:
                    self._p.stdin.write("quit\n")
                    self._p.stdin.flush()
            except OSError:
                pass
            try:
                self._p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._p.kill()
                self._p.wait()
        for f in (self._p.stdin, self._p.stdout, self._p.stderr):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> "JaxChild":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def result(self) -> JaxResult:
        return JaxResult(self.key, self.threads, self.steps, list(self.times), self.first_losses,
                         self.compile_s, self.version)


def run_jax(key: str, threads: int, steps: Optional[int] = None, reps: int = 7, seed: int = 0,
            timeout: float = 600.0) -> JaxResult:
    """Time `reps` calls of JAX's compiled loop for reference model `key` in a child process on
    `threads` threads. Raises RuntimeError when JAX is missing or the child fails."""
    with JaxChild(key, threads, steps, seed, timeout) as child:
        for _ in range(reps):
            child.time_one()
        return child.result()


def time_ours(case: LoopCase, reps: int) -> Tuple[List[float], np.ndarray]:
    """Per-step seconds of `reps` calls of our loop, after a first call whose losses are
    returned (the comparison with JAX's first call, from the same parameters)."""
    first = np.asarray(case(), dtype=np.float64)
    times: List[float] = []
    for _ in range(reps):
        times += time_ours_once(case)
    return times, first


def compare(key: str, threads: int, reps: int = 7, steps: Optional[int] = None):
    """(ours per-step times, JaxResult, max relative loss difference over the first loop).
    Ours runs in this process at `threads` threads; the two sides alternate call by call
    (A/B, then B/A), each waiting while the other runs, so drift hits both alike."""
    import layerprop as lp

    from .timing import settle
    old = lp.get_num_threads()
    lp.set_num_threads(threads)
    try:
        case = loop_case(key, steps)
        with JaxChild(key, threads, case.steps) as child:
            ours, first = time_ours(case, 1)      # warm: workspace, pages, the pool
            child.time_one()
            ours, child.times = [], []
            # Each side starts on idle cores: XLA's workers in the child spin for a while after
            # its call, as ours do after ours, and either would take a core from the other.
            pids = [child.pid]
            for r in range(reps):
                if r % 2:
                    settle(pids=pids)
                    child.time_one()
                settle(pids=pids)
                ours += time_ours_once(case)
                if not r % 2:
                    settle(pids=pids)
                    child.time_one()
            res = child.result()
    finally:
        lp.set_num_threads(old)
    # The first CHECKED_STEPS losses: a wrong rule shows within them, while over thousands of
    # steps float32 rounding alone lets two correct trajectories drift apart (T b1 SGD: 1.5e-3
    # after 5,000 steps).
    n = min(CHECKED_STEPS, len(first))
    rel = float(np.max(np.abs(first[:n] - res.first_losses[:n]) / np.maximum(np.abs(res.first_losses[:n]), 1e-12)))
    return ours, res, rel


def time_ours_once(case: LoopCase) -> List[float]:
    t0 = time.perf_counter()
    case()
    return [(time.perf_counter() - t0) / case.steps]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m layerprop.bench.jaxpeer",
                                 description="Serve JAX's compiled training loop for one reference model: one "
                                             "JSON line once compiled, then one call timed per 'run' line on "
                                             "stdin (seconds per step). --cpus sets how many threads XLA runs.")
    ap.add_argument("--key", required=True, choices=sorted(MODELS))
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", default="", help="comma-separated CPUs to run on (before JAX starts)")
    a = ap.parse_args(argv)
    if a.steps < 0:
        ap.error("--steps must be >= 0")
    if a.cpus:
        try:
            os.sched_setaffinity(0, {int(c) for c in a.cpus.split(",")})
        except (ValueError, OSError) as e:
            ap.error(f"--cpus {a.cpus!r}: {e}")
    _serve(a.key, a.steps or STEPS[a.key], a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
