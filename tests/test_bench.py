"""`layerprop bench`: the table's shape and the option errors (no timing assertions)."""

import math
import re
import time

import pytest

from layerprop import bench
from layerprop.cli import main

COLUMNS = ["case", "threads", "ours (median)", "peer", "peer (median)", "ratio", "GFLOP/s", "% peak"]


def _table(out):
    """The header line, the rule and the rows of the text table."""
    lines = out.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith("case "))
    assert set(lines[i + 1].replace(" ", "")) == {"-"}
    return lines[i], lines[i + 2:]


def test_bench_quick_t1_prints_the_table(capsys):
    pytest.importorskip("torch")
    assert main(["bench", "--quick", "--cases", "T1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "GEMM peak (measured):" in out and "1024^3" in out
    header, rows = _table(out)
    assert re.split(r"\s{2,}", header.strip()) == COLUMNS
    # With JAX installed, a second row: the core's loop against JAX's compiled loop.
    assert len(rows) == (2 if bench.jaxpeer.available() else 1), rows
    if len(rows) == 2:
        assert re.match(r"loop T b1(?: \[noisy: IQR \d+% of median\])?\s+1\s+[\d.]+ (us|ms)\s+JAX jit\+scan\s+"
                        r"[\d.]+ (us|ms)\s+[\d.]+x\s+[\d.]+\s+\d+%$", rows[1]), rows[1]
    m = re.match(r"train T b1(?: \[noisy: IQR \d+% of median\])?\s+1\s+([\d.]+) (us|ms|s)\s+PyTorch eager\s+([\d.]+) (us|ms|s)\s+"
                 r"([\d.]+)x\s+([\d.]+)\s+(\d+)%$", rows[0])
    assert m, rows[0]
    ratio, gflops = float(m.group(5)), float(m.group(6))
    assert math.isfinite(ratio) and ratio > 0
    assert math.isfinite(gflops) and gflops > 0
    assert "first loss differs" not in out


def test_bench_markdown(capsys):
    assert main(["bench", "--quick", "--cases", "t1", "--threads", "1", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| " + " | ".join(COLUMNS) + " |"
    assert re.fullmatch(r"\|(-+:?\|)+", out[1])
    cells = [c.strip() for c in out[2].strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert cells[0].startswith("train T b1") and cells[1] == "1"


def test_missing_peer_says_na(monkeypatch):
    monkeypatch.setattr(bench.twins, "torch_twin", lambda model, sizes: None)  # where the cases look it up
    monkeypatch.setattr(bench.jaxpeer, "available", lambda: False)             # no JAX row either
    report = bench.run(["T1"], [1], quick=True)
    (row,) = report.rows
    assert row.peer_s is None and row.ratio is None
    table = bench.format_table(report)
    assert re.search(r"PyTorch eager\s+n/a\s+n/a", table), table


def test_flop_counts():
    # T b1: forward 2*(16*64 + 64*64 + 64*1), backward twice that minus the first input gradient.
    assert bench.train_flops(bench.MODELS["T1"]) == 2 * (16 * 64 * 2 + 64 * 64 * 3 + 64 * 1 * 3)
    assert bench.infer_flops((784, 512, 512, 10)) == 2 * (784 * 512 + 512 * 512 + 512 * 10)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "thread counts >= 1"),
    (["--threads", "1,two"], "thread counts >= 1"),
    (["--threads", ""], "thread counts >= 1"),
    (["--cases", "T1,XL"], "unknown case 'XL'"),
    (["--cases", ""], "unknown case ''"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


def test_run_refuses_unknown_case():
    with pytest.raises(ValueError, match="unknown"):
        bench.run(["Q"], [1], quick=True)


def test_settle_waits_for_a_busy_peer_process():
    """settle(pids=...) counts another process's CPU time: beside a spinning child it waits
    until max_s; beside a sleeping one it returns after a quiet window."""
    import subprocess
    import sys

    from layerprop.bench.timing import _pids_cpu, settle

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # let the spinner accumulate scheduler ticks
        assert _pids_cpu([busy.pid]) > 0
        assert settle(pids=[busy.pid], max_s=0.3) >= 0.3
        assert settle(pids=[idle.pid], max_s=5.0) < 5.0
        assert _pids_cpu([999999999]) == 0.0  # no such process: nothing counted, no error
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()

