"""`layerprop compare`: the --quick run's table and plot, option errors (no timing assertions)."""

import math
import re
import sys

import pytest

from layerprop import compare
from layerprop.cli import main

pytest.importorskip("sklearn")

LABELS = ["Simultaneous", "Layerwise top_down", "Layerwise bottom_up", "LocoProp S", "LocoProp M"]
ROW = re.compile(r"(digits|autoencoder)\s+(Simultaneous|Layerwise top_down|Layerwise bottom_up|LocoProp S|"
                 r"LocoProp M)\s+(yes|no)\s+([\d.e+-]+)\s+(acc|BCE) ([\d.]+)\s+([\d.]+)\s+(\d+)\+(\d+)=(\d+)\s+"
                 r"([\d.]+)x\s+(-?[\d.]+)\s+([\d.e+-]+)$")


def _rows(out):
    return [m for m in (ROW.match(line) for line in out.splitlines()) if m]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run of everything (both tasks, every schedule, with and without BN)."""
    path = tmp_path_factory.mktemp("compare") / "curves.png"
    import contextlib
    import io
    # capsys is function-scoped: capture this module-scoped run by hand.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compare", "--quick", "--plot", str(path)])
    return code, out.getvalue(), err.getvalue(), path


def test_quick_run_prints_every_schedule_with_and_without_bn(quick_run):
    code, out, err, _ = quick_run
    assert code == 0, err
    assert "(--quick)" in out and "1 epoch," in out
    rows = _rows(out)
    got = [(m.group(1), m.group(2), m.group(3)) for m in rows]
    want = [(t, s, bn) for t in ("digits", "autoencoder") for bn in ("no", "yes") for s in LABELS]
    assert got == want, out
    for m in rows:
        train_loss, metric, ms = float(m.group(4)), float(m.group(6)), float(m.group(7))
        fwd, bwd, total = int(m.group(8)), int(m.group(9)), int(m.group(10))
        assert math.isfinite(train_loss) and train_loss > 0
        assert (0 <= metric <= 1) if m.group(5) == "acc" else metric > 0
        assert (m.group(5) == "acc") == (m.group(1) == "digits")
        assert ms > 0 and fwd > 0 and bwd > 0 and fwd + bwd == total
        assert -1 <= float(m.group(12)) <= 1 and float(m.group(13)) >= 0
    # Simultaneous is the reference of the cost ratio; the other schedules cost more.
    for m in rows:
        ratio = float(m.group(11))
        assert ratio == 1.0 if m.group(2) == "Simultaneous" else ratio > 1.0
    # Simultaneous: every node once forward (a Linear with its activation fused counts once).
    sim = {(m.group(1), m.group(3)): int(m.group(8)) for m in rows if m.group(2) == "Simultaneous"}
    assert sim[("digits", "no")] == 3 and sim[("autoencoder", "no")] == 8
    assert "moving_target" in out


def test_quick_run_writes_the_plot(quick_run):
    pytest.importorskip("matplotlib")
    code, out, _err, path = quick_run
    assert code == 0
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"loss curves written to {path}" in out


def test_plot_skipped_with_a_note_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    path = tmp_path / "c.png"
    assert main(["compare", "--quick", "--tasks", "digits", "--schedules", "simultaneous", "--no-bn",
                 "--plot", str(path)]) == 0
    captured = capsys.readouterr()
    assert not path.exists()
    assert "matplotlib is not installed, so no plot was written" in captured.err
    assert len(_rows(captured.out)) == 1


def test_selection_options_and_markdown(capsys):
    assert main(["compare", "--quick", "--tasks", "digits", "--schedules", "locoprop_m,simultaneous",
                 "--bn-only", "--markdown", "--no-plot"]) == 0
    out = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(out) if line.startswith("| task "))
    assert out[i] == "| " + " | ".join(compare.COLUMNS) + " |"
    assert re.fullmatch(r"\|(-+:?\|)+", out[i + 1].replace("---:", "---").replace("---", "-"))
    body = [[c.strip() for c in line.strip("|").split("|")] for line in out[i + 2:i + 4]]
    assert [(r[0], r[1], r[2]) for r in body] == [("digits", "LocoProp M", "yes"), ("digits", "Simultaneous", "yes")]
    assert all(len(r) == len(compare.COLUMNS) for r in body)
    assert not any(line.startswith("| digits") for line in out[i + 4:])
    assert not any("loss curves written" in line for line in out)


def test_run_is_reproducible():
    a = compare.run(["digits"], ["simultaneous", "top_down"], (True,), 1, quick=True)
    b = compare.run(["digits"], ["simultaneous", "top_down"], (True,), 1, quick=True)
    for ra, rb in zip(a.results, b.results):
        assert ra.losses == rb.losses and ra.test_metric == rb.test_metric
        assert ra.mt_cosine == rb.mt_cosine and (ra.forward, ra.backward) == (rb.forward, rb.backward)


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "mnist"], "argument --tasks/--task: unknown task 'mnist' (choose from digits, autoencoder, curves)"),
    (["--schedules", "simultaneous,adamw"], "argument --schedules: unknown schedule 'adamw'"),
    (["--schedules", ","], "argument --schedules: expected a comma-separated list of schedules"),
    (["--no-bn", "--bn-only"], "argument --bn-only: not allowed with argument --no-bn"),
    (["--epochs", "0"], "--epochs: expected a positive number"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--probe-lr", "-1"], "argument --probe-lr: expected a positive number, got '-1'"),
    (["--threads", "-2"], "--threads: expected a number >= 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("layerprop") and message in err, err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--epochs", "--tasks", "--schedules", "--no-bn", "--bn-only", "--quick", "--markdown",
                "--plot", "--probe-lr", "--seeds", "--rows", "--long-epochs", "--sweep-epochs", "--json"):
        assert opt in out
