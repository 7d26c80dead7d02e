"""`layerprop compare --task curves`: the paper-shaped autoencoder, the learning-rate sweep, the
--quick run's table, figures and plot, and option errors (no timing assertions)."""

import contextlib
import io
import json
import math
import re

import numpy as np
import pytest

import layerprop as lp
from layerprop import compare_curves as C
from layerprop.cli import main

LABELS = [C.LABELS[s] for s in C.SCHEDULES]


def _kinds(layers):
    return [type(layer).__name__ for layer in layers]


@pytest.mark.parametrize("bn", [False, True])
def test_the_network_has_the_papers_shape(bn):
    layers = C.build_layers(bn)
    linears = [layer for layer in layers if isinstance(layer, lp.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(C.SIZES[:-1], C.SIZES[1:]))
    assert C.SIZES == (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
    # tanh after every hidden Linear but the 30-unit code; the output logits go to the loss.
    hidden = ["BatchNorm1d", "Tanh"] if bn else ["Tanh"]
    want = []
    for i in range(8):
        want.append("Linear")
        if i not in (3, 7):
            want += hidden
    assert _kinds(layers) == want
    model = lp.Sequential(*layers)
    assert (model.in_features, model.out_features) == (784, 784)


def test_the_quick_network_keeps_the_depth_and_the_linear_code():
    layers = C.build_layers(False, C.QUICK_SIZES)
    assert _kinds(layers) == _kinds(C.build_layers(False))
    assert C.QUICK_SIZES[0] == C.QUICK_SIZES[-1] == 784


def test_locoprop_runs_in_the_papers_units_with_k10_and_rmsprop():
    for s, variant in (("locoprop_s", "S"), ("locoprop_m", "M")):
        sched = C._schedule(s)
        assert isinstance(sched, lp.LocoProp)
        assert (sched.variant, sched.inner_steps, sched.target_lr, sched.units) == (variant, 10, 10.0, "paper")
        assert isinstance(C._optimizer(s, 1e-3), lp.RMSprop)
    # gamma = 10 in the paper's units is 10 * 784 in layerprop's for the 784 BCE outputs
    assert C._schedule("locoprop_m").core_target_lr("bce_with_logits", 784) == pytest.approx(7840.0)
    sgd = C._optimizer("sgd", 3.0)
    assert isinstance(sgd, lp.SGD) and (sgd.lr, sgd.momentum) == (3.0, 0.9)
    assert isinstance(C._optimizer("top_down", 0.01, "adam"), lp.Adam)
    assert isinstance(C._schedule("bottom_up"), lp.Layerwise) and C._schedule("bottom_up").order == "bottom_up"
    assert isinstance(C._schedule("adam"), lp.Simultaneous)


@pytest.mark.parametrize("grid, losses, want", [
    ((1.0, 2.0, 3.0), [0.5, 0.2, 0.3], 2.0),
    ((1.0, 2.0, 3.0), [0.5, math.nan, 0.3], 3.0),        # a diverged rate is out
    ((1.0, 2.0, 3.0), [0.1, 0.1, 0.3], 1.0),             # ties: the first
    ((1e-4,), [0.7], 1e-4),
])
def test_pick_lr_takes_the_lowest_finite_loss(grid, losses, want):
    assert C.pick_lr(grid, losses) == want


@pytest.mark.parametrize("grid, losses, message", [
    ((1.0, 2.0), [math.nan, math.inf], "every learning rate of the grid diverged"),
    ((1.0, 2.0), [0.1], "one loss per learning rate"),
    ((), [], "one loss per learning rate"),
])
def test_pick_lr_errors(grid, losses, message):
    with pytest.raises(ValueError, match=message):
        C.pick_lr(grid, losses)


def _run(epochs, seconds):
    return C.CurvesRun("adam", "Adam", "Adam(lr=0.001)", False, 0, 2, list(epochs), list(seconds), 5,
                       0.1, 0.1, 8, 14)


def test_loss_at_time_is_the_last_epoch_finished_by_then():
    r = _run([0.6, 0.5, 0.4], [1.0, 1.0, 1.0])
    assert C.loss_at_time(r, 2.5) == (0.5, 2)
    assert C.loss_at_time(r, 2.0) == (0.5, 2)
    assert C.loss_at_time(r, 10.0) == (0.4, 3)
    l0, n0 = C.loss_at_time(r, 0.5)
    assert math.isnan(l0) and n0 == 0
    assert r.ms_per_step == pytest.approx(200.0) and r.total_seconds == pytest.approx(3.0)


def test_a_diverged_run_has_no_finite_figures():
    r = _run([0.6, math.nan], [1.0, math.nan])
    assert r.total_seconds == pytest.approx(1.0)
    assert C.loss_at_time(r, 5.0) == (0.6, 1)


@pytest.fixture(scope="module")
def quick_curves(tmp_path_factory):
    """One --quick curves run (every schedule, with and without BN) with its JSON and plot."""
    d = tmp_path_factory.mktemp("curves")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["compare", "--task", "curves", "--quick", "--threads", "1", "--plot", str(d / "c.png"),
                     "--json", str(d / "c.json")])
    return code, out.getvalue(), err.getvalue(), d


def test_quick_curves_runs_every_schedule_with_finite_figures(quick_curves):
    code, out, err, d = quick_curves
    assert code == 0, err
    report = C.CurvesReport.from_json((d / "c.json").read_text())
    b = report.budget
    assert report.quick and b == C.QUICK and b.sizes == C.QUICK_SIZES and report.threads == 1
    got = [(r.schedule, r.bn, r.seed) for r in report.runs]
    assert got == [(s, bn, 0) for bn in (False, True) for s in C.SCHEDULES]
    for r in report.runs:
        assert len(r.losses) == (b.long_epochs if r.schedule in C.BASELINES else b.epochs)
        assert len(r.epoch_seconds) == len(r.losses) and r.steps_per_epoch == 2
        assert all(math.isfinite(v) and v > 0 for v in r.losses), r
        assert all(math.isfinite(t) and t > 0 for t in r.epoch_seconds), r
        assert math.isfinite(r.train_bce) and math.isfinite(r.test_bce) and r.test_bce > 0
        assert r.forward > 0 and r.backward > 0
    # every schedule of a BN mode has the same cost pattern across schedules: LocoProp adds the inner loop
    ops = {(r.schedule, r.bn): r.forward + r.backward for r in report.runs}
    assert ops[("adam", False)] == ops[("sgd", False)] == 22
    assert ops[("locoprop_m", False)] > ops[("top_down", False)] > ops[("adam", False)]


def test_quick_curves_sweep_picks_the_argmin_and_is_printed(quick_curves):
    code, out, _err, d = quick_curves
    report = C.CurvesReport.from_json((d / "c.json").read_text())
    assert set(report.sweeps) == {"sgd", "adam", "rmsprop", "locoprop_s", "locoprop_m"}
    for s, sw in report.sweeps.items():
        assert sw.grid == C.GRIDS[s] and len(sw.losses) == len(sw.grid)
        finite = [v if math.isfinite(v) else np.inf for v in sw.losses]
        assert sw.lr == sw.grid[int(np.argmin(finite))]
        assert f"{sw.lr:g}: {sw.losses[sw.grid.index(sw.lr)]:.4f}*" in out
    # each run trains with its schedule's chosen rate; Layerwise with the best baseline's
    best = min(C.BASELINES, key=lambda s: min(v for v in report.sweeps[s].losses if math.isfinite(v)))
    assert report.layerwise_optimizer == C.LABELS[best]
    for r in report.runs:
        src = best if r.schedule in ("top_down", "bottom_up") else r.schedule
        assert f"lr={report.sweeps[src].lr:g}" in r.optimizer
    assert "learning-rate sweep: seed 0, no BatchNorm, 1 epoch" in out


def test_quick_curves_table_and_plot(quick_curves):
    code, out, _err, d = quick_curves
    assert "(--quick)" in out and "784-64-32-16-8-16-32-64-784" in out
    rows = [line for line in out.splitlines() if re.match(r"(SGD-momentum|Adam|RMSprop|LocoProp|Layerwise) ", line)]
    assert [re.split(r"\s{2,}", r)[0] for r in rows] == LABELS * 2
    assert [re.split(r"\s{2,}", r)[2] for r in rows] == ["no"] * 7 + ["yes"] * 7
    for r in rows:
        ms = float(re.split(r"\s{2,}", r)[8])
        assert ms > 0
    pytest.importorskip("matplotlib")
    assert (d / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"loss curves written to {d / 'c.png'}" in out


def test_json_round_trip(quick_curves):
    _code, _out, _err, d = quick_curves
    text = (d / "c.json").read_text()
    report = C.CurvesReport.from_json(text)
    assert json.loads(report.to_json()) == json.loads(text)
    assert C.format_curves(report) == C.format_curves(C.CurvesReport.from_json(report.to_json()))


def test_selection_markdown_and_both_kinds_of_task(capsys, tmp_path):
    pytest.importorskip("sklearn")
    assert main(["compare", "--quick", "--threads", "1", "--tasks", "digits,curves", "--schedules",
                 "simultaneous,adam,locoprop_m", "--no-bn", "--markdown", "--rows", "40",
                 "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "| digits | Simultaneous | no |" in out and "| digits | LocoProp M | no |" in out
    assert re.search(r"^\| Adam \| Adam\(lr=[\d.e-]+\) \| no \|", out, re.M)
    assert re.search(r"^\| LocoProp M \| RMSprop\(lr=[\d.e-]+\) \| no \|", out, re.M)
    assert "| SGD-momentum |" not in out and "| yes |" not in out
    assert "40 training / 32 held-out" in out
    assert "  Adam " in out and "  LocoProp M " in out and "  RMSprop " not in out  # only the runs' sweeps
    if (tmp_path / "p.png").exists():
        assert (tmp_path / "p_curves.png").exists()


def test_run_curves_argument_errors():
    with pytest.raises(ValueError, match="unknown curves schedule 'simultaneous'"):
        C.run_curves(["simultaneous"], budget=C.QUICK)
    with pytest.raises(ValueError, match="long_epochs: expected at least epochs"):
        C.run_curves(["adam"], budget=C.Budget(rows=8, n_test=4, batch=4, epochs=3, long_epochs=2,
                                               sweep_epochs=1, seeds=(0,), sizes=C.QUICK_SIZES))


@pytest.mark.parametrize("argv, message", [
    (["--task", "mnist"], "unknown task 'mnist' (choose from digits, autoencoder, curves)"),
    (["--task", "curves", "--rows", "0"], "--rows: expected a positive number"),
    (["--task", "curves", "--sweep-epochs", "0"], "--sweep-epochs: expected a positive number"),
    (["--task", "curves", "--epochs", "3", "--long-epochs", "2"], "--long-epochs: expected at least --epochs (3), got 2"),
    (["--task", "curves", "--seeds", "0,x"], "argument --seeds: expected a comma-separated list of seeds >= 0"),
    (["--task", "curves", "--seeds", "-1"], "argument --seeds: expected a comma-separated list of seeds >= 0"),
    (["--task", "curves", "--schedules", "simultaneous"], "--schedules: none applies to curves (choose from sgd"),
    (["--task", "digits", "--schedules", "adam"], "--schedules: none applies to digits (choose from simultaneous"),
    (["--task", "digits", "--seeds", "0,1"], "--seeds, --rows, --long-epochs, --sweep-epochs and --json apply to "
                                             "--task curves only"),
    (["--schedules", "sgd,adamw"], "argument --schedules: unknown schedule 'adamw'"),
])
def test_bad_curves_options_exit_2_with_one_line(argv, message, capsys):
    try:
        code = main(["compare", *argv])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("layerprop") and message in err, err
