"""The report as one aligned text (or Markdown) table with its header lines."""
from __future__ import annotations

import os
import platform
from typing import List, Optional, Sequence

import numpy as np

from .harness import Report, Row
from .specs import _torch_or_none


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
    from .jaxpeer import available as jax_available
    if jax_available():
        from importlib.metadata import PackageNotFoundError, version
        try:
            peers.append(f"jax {version('jax')} (child process per thread count)")
        except PackageNotFoundError:
            peers.append("jax")
    else:
        peers.append("jax n/a (pip install 'layerprop[jax]')")
    load = ""
    if report.other_load is not None:
        load = f"; other processes used {report.other_load:.2f} CPUs on average during the run"
        if report.other_load >= 0.1:
            load += " (expect noise)"
    lines = [
        f"layerprop {info['version']} ({info['simd']}"
        f"{', AVX-512 GEMM micro-kernels' if info.get('gemm_avx512') else ''}, own thread pool, "
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
        "'loop' rows: time per step of a whole loop of steps with no Python between them -- our "
        "core's epoch loop (what fit runs) against JAX's jit over lax.scan, same batches, same "
        "start, losses compared.",
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
