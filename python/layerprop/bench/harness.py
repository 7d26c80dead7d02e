"""`run`: every case at every thread count, measured into a Report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .procstat import _cpu_snapshot, _other_load
from .specs import CASES, GEMM_SHAPES, INFER_BATCHES, INFER_MODELS, MODELS, gemm_operands
from .timing import Timing, interleaved, measure_peak, threads
from .twins import digits_case, digits_data, digits_flops, gemm_calls, infer_case, onnx_peer, train_case


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


def _jax_rows(key: str, n: int, peak: float, st: Settings) -> List[Row]:
    """Our core's epoch loop (what `fit` runs) against JAX's compiled loop (jit over lax.scan),
    when JAX is installed. JAX runs in a child process on `n` CPUs; the two alternate call by
    call (jaxpeer.compare)."""
    from . import jaxpeer
    if not jaxpeer.available():
        return []
    from .specs import train_flops
    name, flops = f"loop {MODELS[key].name}", train_flops(MODELS[key])
    reps = 3 if st is QUICK else 9
    steps = max(2, jaxpeer.STEPS[key] // (10 if st is QUICK else 1))
    try:
        ours, res, rel = jaxpeer.compare(key, n, reps=reps, steps=steps)
    except RuntimeError as e:
        return [Row(name, n, jaxpeer.PEER, Timing([float("nan")]), None, flops, peak,
                    f"JAX failed: {str(e).splitlines()[0][:80]}")]
    # Adam from the same start drifts by float32 rounding over the loop; a wrong rule would not
    # stay within this.
    note = "" if rel <= 1e-3 else f"losses differ by {rel:.1e}"
    return [Row(name, n, jaxpeer.PEER, Timing(ours), Timing(res.times), flops, peak, note)]


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
        # onnxruntime on the exported graph, at batch 1 and the larger batches of INFER_BATCHES
        model = case.model
        rng = np.random.default_rng(1)
        for b in INFER_BATCHES[key]:
            x = case.x if b == 1 else rng.standard_normal((b, case.sizes[0]), dtype=np.float32)
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
                    block.extend(_jax_rows(c, n, peak, st))
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
