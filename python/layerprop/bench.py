"""`layerprop bench`: layerprop against its peers (PyTorch eager, NumPy, torch.mm, scikit-learn)
on the reference models of DESIGN.md, A/B interleaved, in one table.

The case builders here (`train_case`, `infer_case`, `gemm_operands`, `digits_case`, ...) are also
what the pytest-benchmark suites in benchmarks/ run, so the report and the suites measure the
same thing.

Measurement: each case's callables (ours first, then the peers) are called in an interleaved
loop, rotating which one goes first each round, so that machine noise (other processes, clock
changes) falls on both sides alike. A sample is the mean of `inner` back-to-back calls, with
`inner` calibrated per callable so that one sample lasts about `sample_s`; the table reports
the median sample of each side. At more than one thread, each sample starts once the other
libraries' thread pools have stopped spinning (`settle`): several OpenMP/BLAS runtimes share
this process, which no real program does, and a spinning pool steals cores from the next call.

FLOP counts are those of the matrix products only (2*M*N*K each): forward, weight gradient and
input gradient (none for the first layer's input). Element-wise work, losses and optimizer
updates are not counted. "% peak" divides our achieved GFLOP/s by the GEMM peak measured at the
same thread count: the best GFLOP/s of `_core._gemm` on a 1024x1024x1024 float32 product.
"""
from __future__ import annotations

import contextlib
import gc
import os
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MODELS", "CASES", "GEMM_SHAPES", "ModelSpec", "TrainCase", "InferCase", "Row",
    "threads", "train_flops", "infer_flops", "build_model", "torch_twin", "train_case",
    "infer_case", "gemm_operands", "gemm_reference", "digits_data", "digits_case",
    "settle", "interleaved", "measure_peak", "Report", "run", "format_table", "add_parser",
]

# --------------------------------------------------------------------------------------------
# The reference models (DESIGN.md): sizes, loss, optimizer, batch.


@dataclass(frozen=True)
class ModelSpec:
    name: str
    sizes: Tuple[int, ...]
    loss: str                      # "mse" or "cross_entropy"
    optimizer: str                 # "sgd", "sgd_momentum" or "adam"
    batch: int

    @property
    def layers(self) -> List[Tuple[int, int]]:
        return list(zip(self.sizes[:-1], self.sizes[1:]))


MODELS: Dict[str, ModelSpec] = {
    "T1": ModelSpec("T b1", (16, 64, 64, 1), "mse", "sgd", 1),
    "T32": ModelSpec("T b32", (16, 64, 64, 1), "mse", "sgd", 32),
    "S": ModelSpec("S b32", (784, 128, 10), "cross_entropy", "sgd_momentum", 32),
    "M": ModelSpec("M b256", (784, 512, 512, 10), "cross_entropy", "adam", 256),
    "L": ModelSpec("L b512", (1024, 2048, 2048, 1024), "mse", "adam", 512),
}
# Optimizer settings, identical on both sides (PyTorch's update rules).
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.01)),
    "sgd_momentum": ("SGD", dict(lr=0.01, momentum=0.9)),
    "adam": ("Adam", dict(lr=1e-3)),
}
INFER_MODELS = ("T", "M")          # batch-1 inference
CASES = ("T1", "T32", "S", "M", "L", "gemm", "infer", "digits")

# GEMM shapes: (label, m, n, k, trans_a, trans_b) for op(a) (m,k) @ op(b) (k,n).
# The MLP shapes are one Linear of M (784 -> 512, batch 256) and of L (2048 -> 2048, batch 512):
# forward x @ w^T (NT), weight gradient dy^T @ x (TN), input gradient dy @ w (NN).
GEMM_SQUARE = (64, 128, 256, 512, 1024, 2048)
GEMM_SHAPES: List[Tuple[str, int, int, int, bool, bool]] = (
    [(f"{s}^3", s, s, s, False, False) for s in GEMM_SQUARE]
    + [("M fwd NT", 256, 512, 784, False, True),
       ("M wgrad TN", 512, 784, 256, True, False),
       ("M igrad NN", 256, 784, 512, False, False),
       ("L fwd NT", 512, 2048, 2048, False, True),
       ("L wgrad TN", 2048, 2048, 512, True, False),
       ("L igrad NN", 512, 2048, 2048, False, False)]
)


def train_flops(spec: ModelSpec) -> float:
    """Matrix-product FLOPs of one training step: forward, weight gradient, and input gradient
    of every layer but the first."""
    n = spec.batch
    f = 0.0
    for i, (a, b) in enumerate(spec.layers):
        f += 2.0 * n * a * b * (2 if i == 0 else 3)
    return f


def infer_flops(sizes: Sequence[int], batch: int = 1) -> float:
    return sum(2.0 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))


# --------------------------------------------------------------------------------------------
# Threads: ours, PyTorch's (OpenMP + MKL) and NumPy's BLAS, set together and restored.

def _torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with `n` threads in layerprop, PyTorch (if installed) and NumPy's BLAS
    (through threadpoolctl, if installed); the previous settings come back afterwards."""
    import layerprop as lp
    old_lp = lp.get_num_threads()
    torch = _torch_or_none()
    old_torch = torch.get_num_threads() if torch is not None else None
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(n, user_api="blas"))
        lp.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            lp.set_num_threads(old_lp)
            if torch is not None:
                torch.set_num_threads(old_torch)


# --------------------------------------------------------------------------------------------
# Models, their PyTorch twins, data.

def build_model(sizes: Sequence[int], loss: Optional[str] = None, optimizer: Optional[str] = None,
                seed: int = 0):
    """lp.Sequential(Linear, ReLU, ..., Linear), float32, compiled if `loss` is given."""
    import layerprop as lp
    layers: List[Any] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(lp.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(lp.ReLU())
    model = lp.Sequential(*layers, seed=seed)
    if loss is not None:
        cls, kw = OPTIMIZERS[optimizer or "sgd"]
        model.compile(loss=loss, optimizer=getattr(lp, cls)(**kw))
    return model


def torch_twin(model, sizes: Sequence[int]):
    """The same nn.Sequential with `model`'s current parameters, or None without PyTorch."""
    torch = _torch_or_none()
    if torch is None:
        return None
    nn = torch.nn
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    params = model.parameters()
    if list(net.state_dict()) != list(params):
        raise RuntimeError(f"parameter names differ from torch's: {list(params)} vs {list(net.state_dict())}")
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[name])))
    return net


def batch(spec: ModelSpec, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((spec.batch, spec.sizes[0]), dtype=np.float32)
    y: np.ndarray
    if spec.loss == "cross_entropy":
        y = rng.integers(0, spec.sizes[-1], size=spec.batch).astype(np.int64)
    else:
        y = rng.standard_normal((spec.batch, spec.sizes[-1]), dtype=np.float32)
    return X, y


@dataclass
class TrainCase:
    """One training step of a reference model, ours and (if PyTorch is installed) its twin,
    both starting from the same parameters on the same batch."""
    spec: ModelSpec
    model: object
    X: np.ndarray
    y: np.ndarray
    ours: Callable[[], float]
    peer: Optional[Callable[[], float]] = None
    net: object = None

    @property
    def flops(self) -> float:
        return train_flops(self.spec)


def train_case(key: str, seed: int = 0, with_peer: bool = True) -> TrainCase:
    """The step functions of reference model `key` ("T1", "T32", "S", "M", "L"); each returns
    the loss before its update."""
    spec = MODELS[key]
    model = build_model(spec.sizes, spec.loss, spec.optimizer, seed=seed)
    X, y = batch(spec, seed)

    def ours() -> float:
        return model.train_step(X, y)

    case = TrainCase(spec, model, X, y, ours)
    net = torch_twin(model, spec.sizes) if with_peer else None
    if net is not None:
        import torch
        F = torch.nn.functional
        cls, kw = OPTIMIZERS[spec.optimizer]
        opt = getattr(torch.optim, cls)(net.parameters(), **kw)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn = F.cross_entropy if spec.loss == "cross_entropy" else F.mse_loss

        def peer() -> float:
            opt.zero_grad()
            loss = loss_fn(net(Xt), yt)
            loss.backward()
            opt.step()
            return loss.item()

        case.peer, case.net = peer, net
    return case


@dataclass
class InferCase:
    """Batch-1 prediction of a reference model, ours and (if PyTorch is installed) its twin's
    under torch.no_grad(); both return a NumPy array."""
    sizes: Tuple[int, ...]
    model: object
    x: np.ndarray
    ours: Callable[[], np.ndarray]
    peer: Optional[Callable[[], np.ndarray]] = None

    @property
    def flops(self) -> float:
        return infer_flops(self.sizes)


def infer_case(key: str, seed: int = 0, with_peer: bool = True) -> InferCase:
    """Batch-1 prediction of reference model "T" or "M"."""
    sizes = MODELS["T1" if key == "T" else key].sizes
    model = build_model(sizes, seed=seed)
    x = np.random.default_rng(seed).standard_normal((1, sizes[0]), dtype=np.float32)

    def ours() -> np.ndarray:
        return model.predict(x)

    case = InferCase(sizes, model, x, ours)
    net = torch_twin(model, sizes) if with_peer else None
    if net is not None:
        import torch
        xt = torch.from_numpy(x)

        def peer() -> np.ndarray:
            with torch.no_grad():
                return net(xt).numpy()

        case.peer = peer
    return case


def gemm_operands(m: int, n: int, k: int, trans_a: bool, trans_b: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b


def gemm_reference(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool) -> np.ndarray:
    """op(a) @ op(b) in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)


def gemm_calls(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool):
    """{"layerprop": ..., "numpy": ..., "torch.mm": ...} callables computing op(a) @ op(b);
    torch.mm only when PyTorch is installed. Transposes are views, never copies."""
    from layerprop import _core
    calls: Dict[str, Callable[[], object]] = {
        "layerprop": lambda: _core._gemm(a, b, trans_a, trans_b),
        "numpy": lambda: np.matmul(a.T if trans_a else a, b.T if trans_b else b),
    }
    torch = _torch_or_none()
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        at, bt = (at.t() if trans_a else at), (bt.t() if trans_b else bt)
        calls["torch.mm"] = lambda: torch.mm(at, bt)
    return calls


def digits_data():
    """scikit-learn's 8x8 digits (1797 images, pixels / 16, float32) or None without it."""
    from .datasets import load_digits
    return load_digits(np.float32)


DIGITS_SIZES = (64, 128, 10)
DIGITS_BATCH = 32


def digits_flops(n: int) -> float:
    spec = ModelSpec("digits", DIGITS_SIZES, "cross_entropy", "adam", n)
    return train_flops(spec)


def digits_case(seed: int = 0, with_peer: bool = True):
    """One epoch of fit on digits: 64-128-10 ReLU, cross-entropy, Adam lr 1e-3, batch 32,
    shuffled. Returns (ours, peer or None, X, y, ours_model, sklearn_estimator or None);
    ours() returns the epoch's mean loss, peer() sklearn's. Without scikit-learn the data are
    random with the digits' shape and there is no peer."""
    data = digits_data()
    if data is None:
        rng = np.random.default_rng(seed)
        X = rng.random((1797, 64), dtype=np.float32)
        y = rng.integers(0, 10, size=1797).astype(np.int64)
    else:
        X, y = data
    model = build_model(DIGITS_SIZES, "cross_entropy", "adam", seed=seed)

    def ours() -> float:
        return model.fit(X, y, epochs=1, batch_size=DIGITS_BATCH, progress=False).history["loss"][-1]

    peer = est = None
    if with_peer and data is not None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        # Same network and optimizer; no L2 penalty (alpha=0) as ours has none; max_iter=1 with
        # warm_start makes each fit() one more epoch. tol and n_iter_no_change never act in one
        # epoch, but every fit() warns that max_iter was reached: that warning is expected here.
        est = MLPClassifier(hidden_layer_sizes=(DIGITS_SIZES[1],), activation="relu", solver="adam",
                            alpha=0.0, batch_size=DIGITS_BATCH, learning_rate_init=1e-3, max_iter=1,
                            shuffle=True, warm_start=True, random_state=seed)

        def peer() -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est.fit(X, y)
            return float(est.loss_curve_[-1])

    return ours, peer, X, y, model, est


# --------------------------------------------------------------------------------------------
# Timing.

def _time_inner(f: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        f()
    return (time.perf_counter() - t0) / inner


def settle(quiet_s: float = 0.012, max_s: float = 0.5) -> float:
    """Sleep until this process's other threads are idle: until, over a `quiet_s` sleep, the
    process used less than 20% of one core. Returns the seconds waited.

    Every thread pool in the process (our OpenMP runtime, PyTorch's OpenMP and MKL, NumPy's
    OpenBLAS) keeps its workers spinning for a while after a parallel call; OpenBLAS's spin for
    about 0.1 s. With as many threads as cores, a call made in that window shares a core with
    the spinner and loses scheduler ticks (we saw a 512^3 product go from 1.7 ms to 5.5 ms
    for 0.1 s after one NumPy product, at 2 threads on 2 cores). A program uses one of these
    libraries at a time, so before each sample the others are let go quiet. `quiet_s` spans
    several scheduler ticks because other threads' CPU time is only accounted at ticks."""
    t0 = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(quiet_s)
        busy = time.process_time() - c0
        now = time.perf_counter()
        if busy < 0.2 * (now - w0) or now - t0 >= max_s:
            return now - t0


@dataclass
class Timing:
    """Seconds per call: the samples and their median."""
    samples: List[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float((q3 - q1) / self.median)


def interleaved(fns: Sequence[Callable[[], object]], *, sample_s: float = 2e-3,
                min_samples: int = 5, max_samples: int = 200, budget_s: float = 1.0,
                warmup: int = 2, quiet: bool = True) -> List[Timing]:
    """Seconds per call of each of `fns`, measured A/B interleaved.

    After `warmup` calls each, every round takes one sample of each callable, rotating which
    goes first (AB, BA, ... for two); a sample is the mean of `inner` consecutive calls, with
    `inner` chosen per callable so that a sample lasts about `sample_s`. With `quiet` (for
    more than one thread), before each sample the other thread pools are let go quiet
    (`settle`); then, for calls under 10 ms, one untimed call wakes this callable's own pool
    and caches, so a sample sees the steady state of a training loop. Rounds go on until
    `min_samples` rounds and `budget_s` seconds, or `max_samples` rounds."""
    fns = list(fns)
    for f in fns:
        for _ in range(warmup):
            f()
    inner, one_call = [], []
    for f in fns:
        if quiet:
            settle()
        one, n = _time_inner(f, 1), 1
        while one * n < sample_s and n < 1 << 20:
            n *= 2
            one = _time_inner(f, n)
        inner.append(max(1, int(round(sample_s / max(one, 1e-9)))))
        one_call.append(one)
    samples: List[List[float]] = [[] for _ in fns]
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t_start = time.perf_counter()
        r = 0
        while r < max_samples and (r < min_samples or time.perf_counter() - t_start < budget_s):
            shift = r % len(fns)
            for i in list(range(shift, len(fns))) + list(range(shift)):
                if quiet:
                    settle()
                if one_call[i] < 10e-3:
                    fns[i]()
                samples[i].append(_time_inner(fns[i], inner[i]))
            r += 1
    finally:
        if gc_was:
            gc.enable()
    return [Timing(s) for s in samples]


def measure_peak(n_threads: int, reps: int = 5, size: int = 1024) -> float:
    """GFLOP/s: the best of `reps` runs of `_core._gemm` on a size^3 float32 product at
    `n_threads` threads (the "GEMM peak (measured)" that "% peak" refers to)."""
    from layerprop import _core
    a, b = gemm_operands(size, size, size, False, False, seed=1)
    with threads(n_threads):
        settle()
        _core._gemm(a, b, False, False)
        best = min(_time_inner(lambda: _core._gemm(a, b, False, False), 1) for _ in range(reps))
    return 2.0 * size ** 3 / best / 1e9


# --------------------------------------------------------------------------------------------
# The report.

@dataclass
class Row:
    case: str
    threads: int
    peer: str
    ours: Timing
    peer_time: Optional[Timing]
    flops: float
    peak_gflops: float
    note: str = ""

    @property
    def ours_s(self) -> float:
        return self.ours.median

    @property
    def peer_s(self) -> Optional[float]:
        return None if self.peer_time is None else self.peer_time.median

    @property
    def ratio(self) -> Optional[float]:
        peer = self.peer_s
        return None if peer is None else peer / self.ours_s

    @property
    def gflops(self) -> float:
        return self.flops / self.ours_s / 1e9

    @property
    def pct_peak(self) -> float:
        return 100.0 * self.gflops / self.peak_gflops

    @property
    def spread(self) -> float:
        """The larger relative interquartile range of the two sides."""
        return max(self.ours.spread, 0.0 if self.peer_time is None else self.peer_time.spread)


@dataclass
class Settings:
    sample_s: float
    min_samples: int
    max_samples: int
    budget_s: float
    peak_reps: int


QUICK = Settings(sample_s=1e-3, min_samples=3, max_samples=30, budget_s=0.15, peak_reps=5)
FULL = Settings(sample_s=5e-3, min_samples=9, max_samples=400, budget_s=2.0, peak_reps=15)


def _measure(fns, st: Settings, big: bool = False) -> List[Timing]:
    # Calls of a second or so (L, 2048^3) get the minimum number of rounds. At one thread no
    # pool has workers to spin, so samples need not wait for quiet.
    import layerprop as lp
    return interleaved(fns, sample_s=st.sample_s, min_samples=st.min_samples,
                       max_samples=st.max_samples, budget_s=0.0 if big else st.budget_s,
                       warmup=1 if big else 2, quiet=lp.get_num_threads() > 1)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def _train_rows(key: str, n: int, peak: float, st: Settings) -> List[Row]:
    case = train_case(key)
    if case.peer is None:
        (t,) = _measure([case.ours], st, big=key == "L")
        return [Row(f"train {case.spec.name}", n, "PyTorch eager", t, None, case.flops, peak)]
    first_ours, first_peer = case.ours(), case.peer()
    note = "" if _rel(first_ours, first_peer) <= 1e-3 else f"first loss differs: {first_ours:.6g} vs {first_peer:.6g}"
    t_ours, t_peer = _measure([case.ours, case.peer], st, big=key == "L")
    return [Row(f"train {case.spec.name}", n, "PyTorch eager", t_ours, t_peer, case.flops, peak, note)]


def onnx_peer(model: object, x: np.ndarray, threads: int) -> Optional[Callable[[], np.ndarray]]:
    """onnxruntime running `model.to_onnx`'s graph on x with `threads` intra-op threads (None
    without the onnx extra): what deployers run for inference."""
    try:
        import onnxruntime as ort
        from .export import model_proto
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Its workers would otherwise spin between runs and take the cores from the case timed
    # next (A/B interleaving): both sides are then measured on idle cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"X": x}
    return lambda: sess.run(None, feed)[0]


def _infer_rows(n: int, peak: float, st: Settings) -> List[Row]:
    rows = []
    for key in INFER_MODELS:
        case = infer_case(key)
        name = f"infer {key} b1"
        if case.peer is None:
            (t,) = _measure([case.ours], st)
            rows.append(Row(name, n, "PyTorch no_grad", t, None, case.flops, peak))
        else:
            note = "" if np.allclose(case.ours(), case.peer(), rtol=1e-4, atol=1e-5) else "outputs differ"
            t_ours, t_peer = _measure([case.ours, case.peer], st)
            rows.append(Row(name, n, "PyTorch no_grad", t_ours, t_peer, case.flops, peak, note))
        # onnxruntime on the exported graph, at batch 1 and 256
        model = case.model
        xb = np.random.default_rng(1).standard_normal((256, case.sizes[0]), dtype=np.float32)
        for b, x in ((1, case.x), (256, xb)):
            ort_call = onnx_peer(model, x, n)
            if ort_call is None:
                break
            ours = (lambda x=x: model.predict(x))  # type: ignore[attr-defined]
            note = "" if np.allclose(ours(), ort_call(), rtol=1e-4, atol=1e-5) else "outputs differ"
            t_ours, t_peer = _measure([ours, ort_call], st)
            rows.append(Row(f"infer {key} b{b}", n, "onnxruntime", t_ours, t_peer, case.flops * b, peak, note))
    return rows


def _gemm_rows(n: int, peak: float, st: Settings) -> List[Row]:
    rows = []
    for label, m, nn, k, ta, tb in GEMM_SHAPES:
        a, b = gemm_operands(m, nn, k, ta, tb)
        calls = gemm_calls(a, b, ta, tb)
        names = list(calls)
        want = calls["numpy"]()
        got = calls["layerprop"]()
        note = "" if float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want))) else "result differs from numpy"
        times = _measure([calls[x] for x in names], st, big=m * nn * k >= 2048 ** 3)
        case = f"gemm {label}" + ("" if label.endswith("^3") else f" {m}x{nn}x{k}")
        for name, t in zip(names[1:], times[1:]):
            rows.append(Row(case, n, name, times[0], t, 2.0 * m * nn * k, peak, note))
        if "torch.mm" not in calls:
            rows.append(Row(case, n, "torch.mm", times[0], None, 2.0 * m * nn * k, peak, note))
    return rows


def _digits_rows(n: int, peak: float, st: Settings) -> List[Row]:
    ours, peer, X, _y, _model, _est = digits_case()
    flops = digits_flops(X.shape[0])
    name = "fit digits /epoch"
    if peer is None:
        (t,) = _measure([ours], st)
        return [Row(name, n, "scikit-learn", t, None, flops, peak,
                    "" if digits_data() is not None else "random data (no scikit-learn)")]
    t_ours, t_peer = _measure([ours, peer], st)
    return [Row(name, n, "scikit-learn", t_ours, t_peer, flops, peak)]


@dataclass
class Report:
    rows: List[Row]
    peaks: Dict[int, float]            # GEMM peak (measured), GFLOP/s per thread count
    quick: bool = False
    other_load: Optional[float] = None    # CPUs busy with other work during the run (Linux)


def _cpu_snapshot() -> Optional[Tuple[float, float, float]]:
    """(wall seconds, busy CPU-seconds of the whole machine from /proc/stat, CPU-seconds of
    this process), or None off Linux."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    busy = sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)   # all but idle and iowait
    t = os.times()
    return time.perf_counter(), busy / hz, t.user + t.system


def _other_load(before, after) -> Optional[float]:
    """CPUs used on average by other processes (and the hypervisor) between two snapshots."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (after[0] - before[0]))


def run(cases: Sequence[str], thread_counts: Sequence[int], quick: bool = False,
        progress: Optional[Callable[[str], None]] = None) -> Report:
    """Measure `cases` (names from CASES) at each thread count. The GEMM peak of a thread count
    is the best of its measurements before and after that thread count's cases."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"cases: unknown {unknown}; expected some of {list(CASES)}")
    if not cases or not thread_counts or any(int(n) < 1 for n in thread_counts):
        raise ValueError("cases and thread_counts: expected at least one case and thread counts >= 1")
    st = QUICK if quick else FULL
    snap = _cpu_snapshot()
    rows: List[Row] = []
    peaks: Dict[int, float] = {}
    for n in thread_counts:
        if progress is not None:
            progress(f"GEMM peak at {n} thread{'s' if n > 1 else ''}")
        peak = measure_peak(n, reps=st.peak_reps)
        block: List[Row] = []
        with threads(n):
            for c in cases:
                if progress is not None:
                    progress(f"{c} at {n} thread{'s' if n > 1 else ''}")
                if c in MODELS:
                    block.extend(_train_rows(c, n, peak, st))
                elif c == "infer":
                    block.extend(_infer_rows(n, peak, st))
                elif c == "gemm":
                    block.extend(_gemm_rows(n, peak, st))
                elif c == "digits":
                    block.extend(_digits_rows(n, peak, st))
        peaks[n] = max(peak, measure_peak(n, reps=st.peak_reps))
        for r in block:
            r.peak_gflops = peaks[n]
        rows.extend(block)
    return Report(rows, peaks, quick, _other_load(snap, _cpu_snapshot()))


COLUMNS = ("case", "threads", "ours (median)", "peer", "peer (median)", "ratio", "GFLOP/s",
           "% peak")


def _fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


NOISY = 0.25     # a row whose interquartile range exceeds this fraction of its median is marked


def _cells(r: Row) -> List[str]:
    ratio = r.ratio
    notes = [r.note] if r.note else []
    if r.spread > NOISY:
        notes.append(f"noisy: IQR {100 * r.spread:.0f}% of median")
    return [r.case + "".join(f" [{x}]" for x in notes), str(r.threads), _fmt_time(r.ours_s),
            r.peer, _fmt_time(r.peer_s), "n/a" if ratio is None else f"{ratio:.2f}x",
            f"{r.gflops:.2f}" if r.gflops < 10 else f"{r.gflops:.1f}", f"{r.pct_peak:.0f}%"]


def machine_lines(report: Report) -> List[str]:
    """What ran where, and how to read the table."""
    import layerprop as lp
    info = lp.build_info()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    torch = _torch_or_none()
    peers = [f"torch {torch.__version__}" if torch is not None else "torch n/a",
             f"numpy {np.__version__}"]
    try:
        import sklearn
        peers.append(f"scikit-learn {sklearn.__version__}")
    except ImportError:
        peers.append("scikit-learn n/a")
    load = ""
    if report.other_load is not None:
        load = f"; other processes used {report.other_load:.2f} CPUs on average during the run"
        if report.other_load >= 0.1:
            load += " (expect noise)"
    lines = [
        f"layerprop {info['version']} ({info['simd']}, OpenMP {'on' if info['openmp'] else 'off'}, "
        f"{info['compiler']}); {', '.join(peers)}",
        f"{cpu}, {os.cpu_count()} CPUs{load}"
        + ("; --quick: few samples, rough figures" if report.quick else ""),
        "GEMM peak (measured): " + ", ".join(f"{v:.1f} GFLOP/s at {k} thread{'s' if k > 1 else ''}"
                                             for k, v in report.peaks.items())
        + " -- the best of _core._gemm on a 1024^3 float32 product; '% peak' is relative to it "
          "(not a theoretical FMA peak).",
        "Medians of A/B-interleaved samples (other thread pools idle before each sample); "
        "ratio = peer / ours (> 1: layerprop is faster); GFLOP/s and % peak are ours, "
        "counting matrix-product FLOPs only.",
    ]
    return lines


def format_table(report: Report, markdown: bool = False) -> str:
    """The report as one aligned text table (or a Markdown table), with its header lines."""
    cells = [_cells(r) for r in report.rows]
    head = machine_lines(report)
    if markdown:
        right = {1, 2, 4, 5, 6, 7}
        out = ["| " + " | ".join(COLUMNS) + " |",
               "|" + "|".join("---:" if i in right else "---" for i in range(len(COLUMNS))) + "|"]
        out += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(out + [""] + [f"- {h}" for h in head])
    widths = [max([len(COLUMNS[i])] + [len(c[i]) for c in cells]) for i in range(len(COLUMNS))]
    left = {0, 3}

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = head + ["", line(COLUMNS), line(["-" * w for w in widths])] + [line(c) for c in cells]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The `layerprop bench` subcommand (registered by cli.build_parser).

def _thread_list(text: str) -> List[int]:
    import argparse
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            n = int(part)
        except ValueError:
            n = 0
        if n < 1:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of thread counts >= 1 such as 1,2; got {text!r}")
        if n not in out:
            out.append(n)
    return out


def _case_list(text: str) -> List[str]:
    import argparse
    by_lower = {c.lower(): c for c in CASES}
    out = []
    for part in text.split(","):
        c = by_lower.get(part.strip().lower())
        if c is None:
            raise argparse.ArgumentTypeError(
                f"unknown case {part.strip()!r} in {text!r}; expected a comma-separated list of "
                f"{','.join(CASES)}")
        if c not in out:
            out.append(c)
    return out


def add_parser(subparsers) -> None:
    """Register `layerprop bench` on the CLI's subparsers."""
    s = subparsers.add_parser(
        "bench", help="time layerprop against PyTorch, NumPy and scikit-learn in one table",
        description="Time training steps of the reference models (T, S, M, L), batch-1 inference, "
                    "GEMM and a digits epoch against PyTorch eager, NumPy, torch.mm and "
                    "scikit-learn, A/B interleaved, and print one table: medians, ratio "
                    "(peer / ours), GFLOP/s and % of the measured GEMM peak.")
    s.add_argument("--quick", action="store_true", help="few samples: a smoke run, rough figures")
    s.add_argument("--threads", dest="bench_threads", type=_thread_list, default=[1, 2],
                   metavar="N[,N...]", help="thread counts to run at (default 1,2)")
    s.add_argument("--cases", type=_case_list, default=list(CASES), metavar="CASE[,CASE...]",
                   help=f"which cases (default all: {','.join(CASES)})")
    s.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")
    s.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    import sys

    def progress(msg: str) -> None:
        print(f"layerprop bench: {msg} ...", file=sys.stderr, flush=True)

    report = run(args.cases, args.bench_threads, quick=args.quick, progress=progress)
    print(format_table(report, markdown=args.markdown))
    return 0
