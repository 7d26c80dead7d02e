"""`layerprop bench --scenarios`: the rows, the targets, the busy neighbour's end and the options
(structure only: no timing is asserted)."""

import importlib.util
import math
import multiprocessing
import os

import pytest

import layerprop as lp
from layerprop.bench import scenarios
from layerprop.cli import main

MODELS = ["D", "S"]
SETTINGS = ["quiet", "busy", "interleaved"]


def documented_target_met(setting, model, t1, t2):
    """The targets as the README states them, written out independently of the package."""
    if setting == "quiet":
        return t1 / t2 >= (1.85 if model in ("M", "L") else 0.97)
    if setting == "busy":
        return t2 <= 1.15 * t1
    assert setting == "interleaved"
    return t1 / t2 >= (1.7 if model in ("M", "L") else 0.97)


@pytest.fixture(scope="module")
def rows():
    threads_before = lp.get_num_threads()
    out = scenarios.run_scenarios(MODELS, SETTINGS, torch=False, quick=True)
    assert lp.get_num_threads() == threads_before
    return out


def test_every_cell_is_measured(rows):
    assert [(r.setting, r.model, r.lib) for r in rows] == [
        (s, m, "layerprop") for s in SETTINGS for m in MODELS]
    for r in rows:
        assert math.isfinite(r.t1) and r.t1 > 0, r
        assert math.isfinite(r.t2) and r.t2 > 0, r
        assert r.speedup == r.t1 / r.t2


def test_met_flag_follows_the_documented_targets(rows):
    for r in rows:
        assert r.met is documented_target_met(r.setting, r.model, r.t1, r.t2), r


def test_the_busy_neighbour_is_gone(rows):
    assert rows and multiprocessing.active_children() == []


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("model", ["D", "S", "M", "L"])
@pytest.mark.parametrize("speedup", [0.5, 0.8, 1 / 1.15, 0.96, 0.97, 0.99, 1.0, 1.2, 1.69, 1.7, 1.84, 1.85, 2.0])
def test_targets_of_every_cell(setting, model, speedup):
    t2 = 1e-3
    t1 = speedup * t2
    assert scenarios.meets_target(setting, model, t1, t2) is documented_target_met(setting, model, t1, t2)


def test_table_shows_every_row_and_the_targets(rows):
    text = scenarios.format_scenarios(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["setting", "model", "library", "1", "thread", "2", "threads",
                                "speed-up", "2-thread", "loops", "other", "threads", "other", "procs", "target", "met"]
    for r, line in zip(rows, lines[2:2 + len(rows)]):
        assert line.split()[:3] == [r.setting, r.model, r.lib]
        assert f"{r.speedup:.2f}x" in line
        assert line.endswith("met" if r.met else "missed")
    assert "quiet: 2-thread speed-up >= 0.97x on every model, >= 1.85x on M and L" in text
    assert "busy: 2-thread step time <= 1.15x the 1-thread step time" in text
    assert "interleaved: 2-thread speed-up >= 0.97x on every model, >= 1.7x on M and L" in text
    md = scenarios.format_scenarios(rows, markdown=True).splitlines()
    assert md[0] == "| " + " | ".join(scenarios.SCENARIO_COLUMNS) + " |"
    assert len(md[2].strip("|").split("|")) == len(scenarios.SCENARIO_COLUMNS)


def test_the_neighbour_is_stopped_when_a_step_fails(monkeypatch):
    def boom(key, lib):
        raise RuntimeError("step failed")

    monkeypatch.setattr(scenarios, "_stepper", boom)
    with pytest.raises(RuntimeError, match="step failed"):
        scenarios.run_scenarios(["D"], ["busy"], torch=False, quick=True)
    assert multiprocessing.active_children() == []


def test_run_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'X'"):
        scenarios.run_scenarios(["X"], ["quiet"], quick=True)
    with pytest.raises(ValueError, match="unknown setting 'loud'"):
        scenarios.run_scenarios(["D"], ["loud"], quick=True)


def test_cli_scenarios_quick(capsys):
    assert main(["bench", "--scenarios", "--quick", "--models", "D", "--settings", "quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["setting", "model", "library"]
    assert lines[2].split()[:3] == ["quiet", "D", "layerprop"]
    assert lines[2].split()[-1] in ("met", "missed")
    assert "Targets" in out
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("argv, message", [
    (["--scenarios", "--models", "X"], "argument --models: unknown model 'X'"),
    (["--scenarios", "--models", "D,"], "argument --models: unknown model ''"),
    (["--scenarios", "--settings", "quiet,loud"], "argument --settings: unknown setting 'loud'"),
])
def test_bad_scenario_options_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--quick", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


@pytest.mark.parametrize("argv, message", [
    (["--models", "D"], "--models applies only with --scenarios"),
    (["--no-torch"], "--no-torch applies only with --scenarios"),
    (["--blas-threads", "1"], "--blas-threads applies only with --scenarios"),
    (["--scenarios", "--blas-threads", "0"], "--blas-threads must be >= 1"),
    (["--scenarios", "--cases", "M"], "--cases does not apply with --scenarios"),
    (["--scenarios", "--threads", "1"], "--threads does not apply with --scenarios"),
])
def test_options_that_do_not_combine(capsys, argv, message):
    assert main(["bench", "--quick", *argv]) == 2
    assert message in capsys.readouterr().err


def test_script_wrapper_rejects_unknown_models(capsys):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "threads.py")
    spec = importlib.util.spec_from_file_location("threads_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as exc:
        mod.main(["--models", "D", "X"])
    assert exc.value.code == 2
    assert "argument --models: unknown value 'X'" in capsys.readouterr().err


def test_blas_threads_limits_numpys_pool_for_the_run_only(capsys):
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    if not before:
        pytest.skip("NumPy has no BLAS pool threadpoolctl can see")
    seen = []
    rows = scenarios.run_scenarios(["D"], ["interleaved"], torch=False, quick=True, blas_threads=1,
                                   progress=lambda msg: seen.append(blas_threads()))
    assert [r.setting for r in rows] == ["interleaved"]
    assert seen and all(v == [1] * len(before) for v in seen)  # limited while the cells ran
    assert blas_threads() == before                              # and given back after
    with pytest.raises(ValueError, match="blas_threads must be an integer >= 1"):
        scenarios.run_scenarios(["D"], ["quiet"], quick=True, blas_threads=0)
    assert main(["bench", "--scenarios", "--quick", "--models", "D", "--settings", "quiet",
                 "--blas-threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "NumPy's BLAS limited to 1 thread(s) (--blas-threads)" in out
    assert blas_threads() == before


def test_rows_say_what_ran_beside_the_two_thread_steps(rows):
    for r in rows:
        assert r.jobs is not None and r.jobs >= 0.0, r
        assert r.other_threads is None or r.other_threads >= 0.0, r
        assert r.other_procs is None or r.other_procs >= 0.0, r
    text = scenarios.format_scenarios(rows)
    assert "2-thread loops: layerprop's loops per step" in text
    for r, line in zip(rows, text.splitlines()[2:]):
        assert f" {r.jobs:.1f} " in line


def test_rounds_alternate_which_thread_count_goes_first(monkeypatch):
    order = []

    def fake_observe(step, between, **kw):
        order.append(lp.get_num_threads())
        return scenarios.Observation(1e-3, 10, 0.01, 0, None, None)

    monkeypatch.setattr(scenarios, "_observe", fake_observe)
    scenarios.run_scenarios(["D"], ["quiet"], torch=False, quick=True, rounds=4)
    assert order == [1, 2, 2, 1, 1, 2, 2, 1]


def test_other_threads_leave_out_the_caller_and_layerprops_workers():
    before = {1: ("python", 1.0), 2: (scenarios.POOL_THREAD_NAME, 5.0), 3: ("openblas", 2.0)}
    after = {1: ("python", 9.0), 2: (scenarios.POOL_THREAD_NAME, 9.0), 3: ("openblas", 2.5),
             4: ("omp_worker", 0.25)}   # thread 4 started between the snapshots
    assert scenarios._other_threads_cpu(before, after, caller=1) == pytest.approx(0.75)
    assert scenarios._other_threads_cpu(None, after, caller=1) is None


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc (Linux)")
def test_thread_cpu_sees_this_thread_and_names_the_pools_workers():
    import threading
    from layerprop import _core
    old = lp.get_num_threads()
    try:
        lp.set_num_threads(2)
        _core._pool_selftest(64, 2)   # starts the worker
    finally:
        lp.set_num_threads(old)
    snap = scenarios._thread_cpu()
    assert snap is not None and threading.get_native_id() in snap
    assert all(cpu >= 0 for _, cpu in snap.values())
    assert scenarios.POOL_THREAD_NAME in {name for name, _ in snap.values()}


def test_cpu_figures_need_a_long_enough_span(monkeypatch):
    steps = iter(range(10 ** 6))
    o = scenarios._observe(lambda: next(steps), None, warmup=1, min_steps=3, seconds=0.0)
    assert o.other_threads is None and o.other_procs is None   # a few microseconds: unknown
    if os.path.isdir("/proc/self/task"):
        monkeypatch.setattr(scenarios, "MIN_CPU_SPAN", 0.0)
        o = scenarios._observe(lambda: next(steps), None, warmup=1, min_steps=3, seconds=0.0)
        assert o.other_threads is not None and o.other_threads >= 0.0
