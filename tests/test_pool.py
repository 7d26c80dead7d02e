"""The core's thread pool (docs/threads.md): every item runs exactly once whoever takes it,
errors come back to the caller, concurrent callers and slow threads change no result, and the
thresholds that size the work are settable, calibrated, saved and read back."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import layerprop as lp
from layerprop import _core, threads

two = pytest.mark.skipif(os.cpu_count() is None or os.cpu_count() < 2, reason="needs 2 cores")


@pytest.fixture
def restore():
    """Restores threads, thresholds and spin time; meanwhile the probe of other busy threads
    is off, so that loops forced onto the pool run there even beside a competing thread (the
    probe would rightly run them serially), and so is the rule that leaves sleeping workers
    asleep for short loops."""
    old_n, old_t = lp.get_num_threads(), threads.thresholds()
    old_spin = _core._pool_stats()["spin_us"]
    _core._set_foreign_probe(False)
    _core._set_keep_workers_asleep(False)  # forced-pool tests: short loops go to the pool too
    yield
    lp.set_num_threads(old_n)
    threads.set_thresholds(old_t)
    _core._set_spin_us(old_spin)
    _core._set_keep_workers_asleep(True)
    _core._set_foreign_probe(os.environ.get("LAYERPROP_FOREIGN_PROBE") != "0")


def run_fresh(code, env=None):
    e = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    # These processes start the pool with their first large call, a moment after NumPy's import,
    # when OpenBLAS's new worker may still be spinning: the probe's scan of runnable threads
    # would rightly leave that core to it and run serially. Off here unless a test asks for it
    # (test_a_stale_sample_counts_the_threads_runnable_now tests it).
    e.setdefault("LAYERPROP_RUNNABLE_SCAN", "0")
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=300, env=e)
    assert r.returncode == 0, r.stderr
    return r


# ------------------------------------------------------------------ items, errors, callers
@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000])
@pytest.mark.parametrize("nt", [1, 2, 4])
def test_every_item_runs_exactly_once(n, nt):
    runs, on_caller = _core._pool_selftest(n, nt)
    assert runs == [1] * n
    if nt == 1 or n <= 1:
        assert on_caller == [1] * n  # inline: no pool at all


@two
def test_slow_items_are_left_to_the_threads_present():
    # One item in five sleeps 2 ms (a thread the OS took away would look like this): all items
    # still run once, and the workers take part (not vacuous: some items ran off the caller).
    seen_worker = False
    for _ in range(20):
        runs, on_caller = _core._pool_selftest(200, 2, sleep_every=5, sleep_us=2000)
        assert runs == [1] * 200
        seen_worker |= 0 in on_caller
        if seen_worker:
            break
    assert seen_worker


def test_an_item_that_raises_reaches_the_caller_and_the_pool_goes_on():
    with pytest.raises(ValueError, match="item 37 failed on purpose"):
        _core._pool_selftest(100, 2, throw_at=37)
    runs, _ = _core._pool_selftest(100, 2)
    assert runs == [1] * 100


def test_callers_on_several_threads_at_once():
    # One job at a time holds the pool; the others run their items inline. None waits forever
    # and every item of every call runs once.
    results, errors = [], []

    def call():
        try:
            for _ in range(30):
                results.append(_core._pool_selftest(300, 2, sleep_every=50, sleep_us=100)[0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=call) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in ts)
    assert len(results) == 120 and all(r == [1] * 300 for r in results)


# ------------------------------------------------------------------ same bits, any schedule
def _train(seed=0, schedule=None, bn=False, steps=3, dtype=np.float32):
    layers = [lp.Linear(300, 256)]
    if bn:
        layers.append(lp.BatchNorm1d(256))
    layers += [lp.Tanh(), lp.Dropout(0.1), lp.Linear(256, 256), lp.ReLU(), lp.Linear(256, 10)]
    m = lp.Sequential(*layers, seed=seed, dtype=dtype)
    m.compile(loss="cross_entropy", optimizer=lp.Adam(lr=1e-3), schedule=schedule)
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((512, 300)).astype(dtype)
    y = rng.integers(0, 10, 512)
    losses = [m.train_step(X, y) for _ in range(steps)]
    return losses, [p.copy() for p in m.parameters().values()], m.predict(X)


def _same(a, b):
    la, pa, ya = a
    lb, pb, yb = b
    assert la == lb
    assert all(np.array_equal(x, z) for x, z in zip(pa, pb))
    assert np.array_equal(ya, yb)


@pytest.mark.parametrize("schedule", [None, lp.Layerwise(order="top_down"), lp.LocoProp(variant="S", inner_steps=2)],
                         ids=["simultaneous", "layerwise", "locoprop"])
def test_bits_do_not_depend_on_threads_thresholds_or_spinning(schedule, restore):
    lp.set_num_threads(1)
    serial = _train(schedule=schedule, bn=True)
    # Every loop on the pool, however small, and workers that sleep at once (spin 0), then
    # 3 threads on 2 cores: the split and the thread that computes each item change each run.
    lp.set_num_threads(2)
    threads.set_thresholds({k: 1 for k in threads.KINDS})
    for spin in (0, 100):
        _core._set_spin_us(spin)
        _same(serial, _train(schedule=schedule, bn=True))
    lp.set_num_threads(3)
    _same(serial, _train(schedule=schedule, bn=True))


def test_bits_hold_while_another_thread_competes_for_the_cores(restore):
    lp.set_num_threads(1)
    serial = _train(dtype=np.float64)
    lp.set_num_threads(2)
    threads.set_thresholds({k: 1 for k in threads.KINDS})
    stop = threading.Event()

    def busy():  # NumPy work in another thread, releasing the GIL: it competes for cores
        a = np.random.default_rng(0).standard_normal((200, 200))
        while not stop.is_set():
            a @ a

    t = threading.Thread(target=busy)
    t.start()
    jobs = _core._pool_stats()["jobs"]
    try:
        for _ in range(3):
            _same(serial, _train(dtype=np.float64))
    finally:
        stop.set()
        t.join()
    assert _core._pool_stats()["jobs"] > jobs   # the loops did go to the pool


def test_two_models_trained_at_once_from_two_threads(restore):
    lp.set_num_threads(1)
    want = [_train(seed=s) for s in (1, 2)]
    lp.set_num_threads(2)
    threads.set_thresholds({k: 1 for k in threads.KINDS})
    got = [None, None]

    def go(i, s):
        got[i] = _train(seed=s)

    ts = [threading.Thread(target=go, args=(i, s)) for i, s in enumerate((1, 2))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    for w, g in zip(want, got):
        _same(w, g)


def test_pool_under_thread_sanitizer(tmp_path):
    # The pool's lock-free claiming, checked by ThreadSanitizer on the real source
    # (cpp/runtime/threads.cpp) with concurrent callers, exceptions and changing spin times.
    import shutil
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("needs g++")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    exe = tmp_path / "pool_stress"
    # Not the sanitizer build's preloaded AddressSanitizer (when this file runs under .ci/sanitize)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    build = subprocess.run([gxx, "-std=c++17", "-O1", "-g", "-fsanitize=thread", "-I", os.path.join(root, "cpp", "include"),
                            os.path.join(root, "tests", "pool_stress.cpp"), os.path.join(root, "cpp", "runtime", "threads.cpp"),
                            "-o", str(exe), "-lpthread"], capture_output=True, text=True, timeout=300, env=env)
    if build.returncode != 0 and "tsan" in build.stderr.lower():
        pytest.skip("this compiler has no ThreadSanitizer runtime")
    assert build.returncode == 0, build.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300,
                       env={**env, "TSAN_OPTIONS": "halt_on_error=1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING: ThreadSanitizer" not in r.stderr
    assert r.stdout.startswith("bad=0 ")
    jobs, items = (int(x.split("=")[1]) for x in r.stdout.split()[1:3])
    assert jobs > 0 and items > 0  # the pool's workers did take part


# ------------------------------------------------------------------ thresholds
def test_thresholds_cover_every_kind_and_start_at_the_defaults():
    t = threads.thresholds()
    assert tuple(t) == threads.KINDS
    assert set(threads.KINDS) == {"gemm", "gemm_small", "eltwise_cheap", "eltwise_costly", "loss", "optim", "sparse"}
    assert all(v is None or (isinstance(v, int) and v >= 1) for v in t.values())
    assert set(threads.defaults()) == set(t)


def test_set_thresholds_round_trip_and_none_means_never(restore):
    threads.set_thresholds({"gemm": 12345, "loss": None})
    t = threads.thresholds()
    assert t["gemm"] == 12345 and t["loss"] is None
    threads.set_thresholds({"gemm": np.int64(7)})
    assert threads.thresholds()["gemm"] == 7


@pytest.mark.parametrize("bad, exc, match", [
    ({"gemm": 0}, ValueError, r"values\['gemm'\]"),
    ({"gemm": -5}, ValueError, r"values\['gemm'\]"),
    ({"gemm": 2.5}, ValueError, r"values\['gemm'\]"),
    ({"gemm": True}, ValueError, r"values\['gemm'\]"),
    ({"matmul": 10}, ValueError, "unknown kind of work 'matmul'"),
    ([("gemm", 10)], TypeError, "values: expected a mapping"),
])
def test_bad_thresholds_are_refused_and_change_nothing(bad, exc, match, restore):
    before = threads.thresholds()
    with pytest.raises(exc, match=match):
        threads.set_thresholds({"optim": 99, **bad} if isinstance(bad, dict) else bad)
    assert threads.thresholds() == before


def test_core_refuses_bad_threshold_names_and_values():
    with pytest.raises(ValueError, match="name: unknown kind"):
        _core._set_work_threshold("nope", 5)
    with pytest.raises(ValueError, match="units"):
        _core._set_work_threshold("gemm", 0)


@two
def test_calibrate_measures_and_applies(restore, tmp_path):
    lp.set_num_threads(2)
    res = threads.calibrate(["eltwise_costly", "optim"], budget=0.002, save=True, path=tmp_path / "t.json")
    assert res["threads"] == 2 and set(res["kinds"]) == {"eltwise_costly", "optim"}
    for k, r in res["kinds"].items():
        assert len(r["units"]) == len(r["serial_s"]) == len(r["pooled_s"]) >= 1
        assert r["units"][0] == 4096 and all(b == 2 * a for a, b in zip(r["units"], r["units"][1:]))
        assert all(s > 0 for s in r["serial_s"] + r["pooled_s"])
        assert threads.thresholds()[k] == r["units_per_thread"]
        if r["units_per_thread"] is not None:  # half the first of two winning sizes in a row
            i = r["units"].index(2 * r["units_per_thread"])
            assert all(r["pooled_s"][j] * 1.3 < r["serial_s"][j] for j in (i, i + 1))
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["format"] == "layerprop-threads-1"
    assert saved["units_per_thread"] == {k: r["units_per_thread"] for k, r in res["kinds"].items()}


def test_calibrate_on_one_thread_changes_nothing(restore):
    lp.set_num_threads(1)
    before = threads.thresholds()
    res = threads.calibrate(["gemm"], budget=0.001)
    assert res["threads"] == 1 and res["kinds"]["gemm"]["units"] == []
    assert threads.thresholds() == before


@pytest.mark.parametrize("kw, match", [({"budget": 0}, "budget"), ({"budget": 11}, "budget"),
                                       ({"margin": 0.5}, "margin"), ({"kinds": ["x"]}, "kinds")])
def test_calibrate_refuses_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        threads.calibrate(**kw)


def test_saved_thresholds_are_read_at_import(tmp_path):
    path = tmp_path / "threads.json"
    threads.save_config({**threads.defaults(), "gemm": 4242, "sparse": None}, path)
    r = run_fresh("""
        import json, layerprop as lp
        print(json.dumps(lp.threads.thresholds()))
    """, {"LAYERPROP_THREADS_FILE": str(path)})
    t = json.loads(r.stdout.strip().splitlines()[-1])
    assert t["gemm"] == 4242 and t["sparse"] is None and t["optim"] == threads.defaults()["optim"]


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}',
                                     '{"format": "layerprop-threads-1", "units_per_thread": {"gemm": -1}}'])
def test_a_bad_saved_file_warns_and_keeps_the_defaults(tmp_path, content):
    path = tmp_path / "threads.json"
    path.write_text(content)
    r = run_fresh("""
        import json, warnings
        warnings.simplefilter("always")
        import layerprop as lp
        print(json.dumps(lp.threads.thresholds() == lp.threads.defaults()))
    """, {"LAYERPROP_THREADS_FILE": str(path)})
    assert r.stdout.strip().splitlines()[-1] == "true"
    assert "ignoring the thread thresholds" in r.stderr and "layerprop calibrate --save" in r.stderr


def test_load_config_without_a_file_is_a_no_op(tmp_path, restore):
    before = threads.thresholds()
    assert threads.load_config(tmp_path / "missing.json") is False
    assert threads.thresholds() == before


# ------------------------------------------------------------------ spinning, neighbours
@pytest.mark.parametrize("value, want", [("0", 0), ("250", 250), ("junk", 100), ("-3", 100)])
def test_spin_time_comes_from_the_environment(value, want):
    r = run_fresh("""
        from layerprop import _core
        print(_core._pool_stats()["spin_us"])
    """, {"LAYERPROP_SPIN_US": value})
    assert int(r.stdout.strip().splitlines()[-1]) == want


@two
def test_idle_workers_sleep_after_spinning():
    # After the spin time a worker blocks: the process uses (almost) no CPU while idle.
    r = run_fresh("""
        import os, time, numpy as np, layerprop as lp
        lp.set_num_threads(2)
        lp.threads.set_thresholds({k: 1 for k in lp.threads.KINDS})
        a = np.ones((300, 300), np.float32)
        m = lp.Sequential(lp.Linear(300, 300), seed=0); m.compile(loss="mse", optimizer=lp.SGD(lr=0.01))
        m.train_step(a, a)
        assert lp.threads.pool_stats()["workers"] == 1
        time.sleep(0.05)
        t0, c0 = time.perf_counter(), time.process_time()
        time.sleep(0.5)
        print((time.process_time() - c0) / (time.perf_counter() - t0))
    """, {"LAYERPROP_SPIN_US": "1000"})
    assert float(r.stdout.strip().splitlines()[-1]) < 0.2


@two
@pytest.mark.parametrize("keep_off", ["1", "0"])
def test_sleeping_workers_are_kept_off_the_callers_cpu_and_get_their_affinity_back(keep_off):
    # After a pause the workers sleep; waking them, the caller narrows their affinity so they
    # do not land on its own CPU, and each worker widens it again once its job is done. So
    # after the calls, every thread of the process may run where it could before, and the
    # moves were counted; the results are unchanged. LAYERPROP_KEEP_OFF_CALLER=0 turns it off.
    r = run_fresh("""
        import os, time, numpy as np, layerprop as lp
        lp.set_num_threads(2)
        lp.threads.set_thresholds({k: 1 for k in lp.threads.KINDS})
        def masks():
            out = {}
            for t in os.listdir("/proc/self/task"):
                try:
                    out[int(t)] = os.sched_getaffinity(int(t))
                except OSError:
                    pass
            return out
        before = os.sched_getaffinity(0)
        m = lp.Sequential(lp.Linear(300, 300), lp.ReLU(), lp.Linear(300, 10), seed=0)
        x = np.ones((64, 300), np.float32)
        ref = m.predict(x)
        for _ in range(20):
            time.sleep(0.005)  # past the spin time: the worker sleeps
            assert np.array_equal(m.predict(x), ref)
        moves = lp.threads.pool_stats()["moves"]
        time.sleep(0.05)
        wide = all(v == before for v in masks().values())
        print(moves, wide, lp.threads.pool_stats()["workers"])
    """, {"LAYERPROP_SPIN_US": "100", "LAYERPROP_FOREIGN_PROBE": "0", "LAYERPROP_KEEP_OFF_CALLER": keep_off})
    moves, wide, workers = r.stdout.split()[-3:]
    assert int(workers) == 1
    if keep_off == "1":
        assert int(moves) >= 10, r.stdout  # nearly every call woke a sleeping worker
    else:
        assert int(moves) == 0, r.stdout   # LAYERPROP_KEEP_OFF_CALLER=0: never narrowed
    assert wide == "True"


@two
def test_a_forked_child_leaves_the_parents_workers_alone():
    # A child forked after the pool started runs serially. Its short loops must not try to
    # wake or narrow "its" workers: their thread ids are the parent's, and narrowing them would
    # pin the parent's worker for good. The parent's threads keep their affinity.
    r = run_fresh("""
        import os, time, numpy as np, layerprop as lp
        lp.set_num_threads(2)
        m = lp.Sequential(lp.Linear(784, 512), seed=0)
        x = np.ones((1, 784), np.float32)
        m.predict(np.ones((256, 784), np.float32))       # starts the worker
        assert lp.threads.pool_stats()["workers"] == 1
        before = {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}
        time.sleep(0.1)                                  # the worker sleeps
        pid = os.fork()
        if pid == 0:
            ok = lp.get_num_threads() == 1
            for _ in range(5):
                m.predict(x)
                time.sleep(0.002)
            os._exit(0 if ok and lp.threads.pool_stats()["prewarms"] == 0 else 3)
        _, status = os.waitpid(pid, 0)
        alive = {int(t) for t in os.listdir("/proc/self/task")} & set(before)
        print(os.waitstatus_to_exitcode(status), all(os.sched_getaffinity(t) == before[t] for t in alive) and len(alive) > 1)
    """, {"LAYERPROP_SPIN_US": "100", "LAYERPROP_FOREIGN_PROBE": "0"})
    code, same = r.stdout.split()[-2:]
    assert code == "0"      # the child ran serially and woke nothing
    assert same == "True"   # the parent's threads may still run on every CPU they could


@two
def test_short_loops_leave_sleeping_workers_asleep_and_wake_them_for_the_next():
    # While the worker sleeps, a loop estimated under 50 us (batch-1 predict through 784 -> 512)
    # runs on the caller and wakes the worker to spin (a prewarm); a stream of such calls then
    # gets the worker. With the rule off, the same call after a pause goes to the pool at once.
    # Results are the same in every case.
    r = run_fresh("""
        import time, numpy as np, layerprop as lp
        from layerprop import _core
        lp.set_num_threads(2)
        m = lp.Sequential(lp.Linear(784, 512), seed=0)
        x = np.linspace(-1, 1, 784, dtype=np.float32)[None, :]
        lp.set_num_threads(1)
        ref = m.predict(x)                               # batch 1 on one thread
        lp.set_num_threads(2)
        m.predict(np.repeat(x, 256, axis=0))             # a large call: starts the worker
        st = lp.threads.pool_stats
        assert st()["workers"] == 1
        time.sleep(0.1)                                  # the worker sleeps
        s0 = st(); y = m.predict(x); s1 = st()
        assert np.array_equal(y[0], ref[0])
        print("inline", s1["jobs"] - s0["jobs"], s1["prewarms"] - s0["prewarms"])
        s2 = st()
        for _ in range(300):
            assert np.array_equal(m.predict(x)[0], ref[0])
        s3 = st()
        print("stream", s3["items_by_workers"] - s2["items_by_workers"])
        _core._set_keep_workers_asleep(False)
        time.sleep(0.1)
        s4 = st(); y = m.predict(x); s5 = st()
        assert np.array_equal(y[0], ref[0])
        print("rule off", s5["jobs"] - s4["jobs"])
    """, {"LAYERPROP_SPIN_US": "20000", "LAYERPROP_FOREIGN_PROBE": "0"})
    # (a 20 ms spin: a prewarmed worker outlasts the next call's Python even in a sanitizer build)
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert lines["inline"].split() == ["0", "1"]  # no pool job, one prewarm
    assert int(lines["stream"]) > 0                # the woken worker took items
    assert int(lines["rule"].split()[-1]) >= 1       # "rule off": a pool job


@two
def test_torch_shares_the_openmp_limit_layerprop_reads():
    # PyTorch's CPU wheel uses the same OpenMP runtime: torch.set_num_threads(k) in a thread
    # sets that thread's OpenMP limit, which caps layerprop's threads there (docs/threads.md);
    # OMP_NUM_THREADS is only layerprop's default: lp.set_num_threads(2) wins over it.
    pytest.importorskip("torch")
    r = run_fresh("""
        import json, torch, layerprop as lp
        lp.set_num_threads(2)
        a = lp.get_num_threads()
        torch.set_num_threads(1)
        b = lp.get_num_threads()
        torch.set_num_threads(2)
        print(json.dumps([a, b, lp.get_num_threads()]))
    """)
    a, b, c = json.loads(r.stdout.strip().splitlines()[-1])
    assert (a, c) == (2, 2)
    assert b == 1
    r = run_fresh("""
        import json, layerprop as lp
        d = lp.get_num_threads()
        lp.set_num_threads(2)
        print(json.dumps([d, lp.get_num_threads()]))
    """, {"OMP_NUM_THREADS": "1"})
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [1, 2]


# ------------------------------------------------------------------ the command line
@two
def test_cli_calibrate_prints_applies_and_saves(tmp_path, capsys, restore):
    from layerprop.cli import main
    path = tmp_path / "t.json"
    threads.set_thresholds({"optim": 5})
    assert main(["calibrate", "--threads", "2", "--budget", "0.001", "--json", "--kinds", "loss,eltwise_costly",
                 "--save", "--path", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threads"] == 2 and set(out["kinds"]) == {"loss", "eltwise_costly"}
    assert out["before"]["optim"] == 5 and threads.thresholds()["optim"] == 5  # not calibrated: kept
    now = threads.thresholds()
    assert all(now[k] == v["units_per_thread"] for k, v in out["kinds"].items())
    assert json.loads(path.read_text())["units_per_thread"] == {k: now[k] for k in out["kinds"]}


@two
def test_cli_calibrate_refuses_unknown_kinds(capsys):
    from layerprop.cli import main
    assert main(["calibrate", "--threads", "2", "--kinds", "gemm,warp"]) == 2
    assert "--kinds" in capsys.readouterr().err


def test_cli_calibrate_on_one_thread_says_why(capsys, restore):
    from layerprop.cli import main
    assert main(["calibrate", "--threads", "1"]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err


def test_cli_info_shows_the_thresholds(capsys):
    from layerprop.cli import main
    assert main(["info"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("thresholds")]
    assert line and all(f"{k}=" in line[0] for k in threads.KINDS)


# What the probe tests' fresh processes share: a 784-512-10 model at 2 threads, a batch of 256,
# and a neighbour thread busy hashing without the GIL.
_PROBE_PREAMBLE = r"""
import hashlib, json, os, threading, time
import numpy as np
import layerprop as lp
from layerprop import _core

lp.set_num_threads(2)
model = lp.Sequential(lp.Linear(784, 512), lp.ReLU(), lp.Linear(512, 10), seed=0)
model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.01))
rng = np.random.default_rng(0)
X = rng.standard_normal((256, 784), dtype=np.float32)
y = rng.integers(0, 10, 256)

def hashing(stop):  # another thread of this process, busy without the GIL
    data = b"x" * (1 << 22)
    while not stop.is_set():
        hashlib.sha256(data).digest()
"""

_FOREIGN_CODE = _PROBE_PREAMBLE + r"""

def steps(seconds):
    before = _core._pool_stats()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        model.train_step(X, y)
        n += 1
    after = _core._pool_stats()
    d = {k: after[k] - before[k] for k in ("jobs", "foreign_samples", "foreign_busy_samples")}
    d["steps"] = n
    return d

steps(0.2)
out = {"quiet": steps(1.0)}
stop = threading.Event()
t = threading.Thread(target=hashing, args=(stop,))
t.start()
try:
    time.sleep(0.05)
    out["busy"] = steps(1.0)
    _core._set_foreign_probe(False)
    out["off"] = steps(0.5)
    _core._set_foreign_probe(True)
finally:
    stop.set()
    t.join()
import subprocess, sys
spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another process
try:
    time.sleep(0.3)
    out["other_process"] = steps(1.5)
finally:
    spinner.kill()
    spinner.wait()
print(json.dumps(out))
"""


def test_other_busy_threads_of_the_process_take_their_cores():
    """The pool samples the CPU time of the process's other threads and of other processes
    (docs/threads.md): with a thread busy hashing beside it, or another process spinning, on 2
    cores, loops run on one thread; quiet, they use both; with the probe off, nothing is
    sampled."""
    import json
    import os
    import subprocess
    import sys

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        # The probe's windows assume a step of milliseconds; under AddressSanitizer one takes
        # ~25 ms, longer than the gap after which a sample restarts, so what this test counts
        # is not what it measures there. The probe's code still runs in every other test.
        pytest.skip("timing-dependent: not under AddressSanitizer")
    env = dict(os.environ)
    env.pop("LAYERPROP_FOREIGN_PROBE", None)
    env.pop("OMP_NUM_THREADS", None)
    r = subprocess.run([sys.executable, "-c", _FOREIGN_CODE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    quiet, busy, off = d["quiet"], d["busy"], d["off"]
    assert quiet["steps"] > 0 and busy["steps"] > 0 and off["steps"] > 0
    # quiet: sampled, rarely busy, and the steps' GEMMs go to the pool
    assert quiet["foreign_samples"] >= 3, quiet
    assert quiet["foreign_busy_samples"] <= quiet["foreign_samples"] // 2, quiet
    assert quiet["jobs"] >= quiet["steps"], quiet
    # another busy thread: most samples see it, and most steps run without the pool
    assert busy["foreign_samples"] >= 3, busy
    assert busy["foreign_busy_samples"] >= busy["foreign_samples"] // 2 + 1, busy
    assert busy["jobs"] < 0.5 * busy["steps"] * quiet["jobs"] / quiet["steps"], (busy, quiet)
    # probe off: no samples, loops threaded again
    assert off["foreign_samples"] == 0, off
    assert off["jobs"] >= off["steps"], off
    # another process busy on one of the 2 cores (seen in /proc/stat over 100 ms windows)
    other = d["other_process"]
    assert other["foreign_busy_samples"] >= other["foreign_samples"] // 2 + 1, other
    assert other["jobs"] < 0.5 * other["steps"] * quiet["jobs"] / quiet["steps"], (other, quiet)


_STALE_CODE = _PROBE_PREAMBLE + r"""
model.train_step(X, y)   # starts the worker

def paused_steps(n):  # each after a pause: the probe's last sample is stale by then
    before = _core._pool_stats()
    for _ in range(n):
        time.sleep(0.08)
        model.train_step(X, y)
    after = _core._pool_stats()
    return {k: after[k] - before[k] for k in ("jobs", "runnable_checks", "runnable_busy")}

def state(tid):
    with open(f"/proc/self/task/{tid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]

deadline = time.time() + 10   # quiet: OpenBLAS's worker, new at NumPy's import, spins a while
while time.time() < deadline and any(
        state(t) == "R" for t in os.listdir("/proc/self/task") if int(t) != threading.get_native_id()):
    time.sleep(0.01)
out = {"quiet": paused_steps(4)}
stop = threading.Event()
t = threading.Thread(target=hashing, args=(stop,))
t.start()
try:
    deadline = time.time() + 10
    while state(t.native_id) != "R" and time.time() < deadline:
        time.sleep(0.001)
    out["busy"] = paused_steps(4)
finally:
    stop.set()
    t.join()
print(json.dumps(out))
"""


def test_a_stale_sample_counts_the_threads_runnable_now():
    """After a pause the probe's last sample is stale (docs/threads.md): its first long loop
    counts the process's other threads that are runnable at that moment as busy cores, until
    the next sample. Quiet, it finds none and the step's loops use both cores; with a thread
    busy hashing beside it, it finds it and the loops run on one."""
    import json
    import subprocess
    import sys

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs /proc (Linux)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("timing-dependent: not under AddressSanitizer")  # as the test above
    env = dict(os.environ)
    env.pop("LAYERPROP_FOREIGN_PROBE", None)
    env.pop("OMP_NUM_THREADS", None)
    r = subprocess.run([sys.executable, "-c", _STALE_CODE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    quiet, busy = d["quiet"], d["busy"]
    assert quiet["runnable_checks"] >= 4 and quiet["runnable_busy"] == 0, quiet
    assert quiet["jobs"] >= 4, quiet
    assert busy["runnable_checks"] >= 4 and busy["runnable_busy"] >= busy["runnable_checks"] - 1, busy
    assert busy["jobs"] < 0.5 * quiet["jobs"], (busy, quiet)


# ------------------------------------------------------------------ the training step's governor
def _governor(t1, t2, threads=2):
    """The caps StepGovernor chooses for steps taking t1[i] ns at 1 thread and t2[i] at `threads`."""
    import layerprop as lp
    from layerprop import _core
    old = lp.get_num_threads()
    lp.set_num_threads(threads)
    try:
        return np.array(_core._step_governor_run([int(v) for v in t1], [int(v) for v in t2]))
    finally:
        lp.set_num_threads(old)


def _runs(caps, value):
    """Lengths of the runs of consecutive `value` in caps."""
    edges = np.diff(np.concatenate(([0], (caps == value).astype(int), [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_step_governor_keeps_the_threads_when_they_pay():
    """S's step as measured: 146 us at 1 thread, 107 us at 2, with +-10% noise. The governor
    keeps 2 threads, probing 1 thread rarely: a few runs of 4 steps in 5,000 steps, further and
    further apart, under 2% of the steps. M's (8.3 ms against 4.5 ms): probes rarer still."""
    rng = np.random.default_rng(0)
    n = 5000
    caps = _governor(146e3 * rng.uniform(0.9, 1.1, n), 107e3 * rng.uniform(0.9, 1.1, n))
    assert set(np.unique(caps)) <= {0, 1}
    runs = _runs(caps, 1)
    assert 3 <= len(runs) <= 10 and (runs == 4).all(), runs
    assert caps.mean() < 0.02
    starts = np.flatnonzero(np.diff(np.concatenate(([0], caps))) == 1)
    assert (np.diff(starts) > 60).all() and np.diff(starts)[-1] >= 1000, starts
    caps_m = _governor(8.3e6 * rng.uniform(0.95, 1.05, n), 4.5e6 * rng.uniform(0.95, 1.05, n))
    assert 2 <= len(_runs(caps_m, 1)) <= 4 and caps_m.mean() < 0.004, _runs(caps_m, 1)
    # nothing to govern at 1 thread: no probes, and the steps are not even timed (-1)
    assert (_governor(np.full(500, 146e3), np.full(500, 107e3), threads=1) == -1).all()


def test_step_governor_goes_serial_when_threads_cost_and_comes_back():
    """A host on which 2 threads run slower than 1 (S's step 240 us at 2 threads against 146 at
    1, seen on a VM whose two vCPUs were placed far apart): within 100 steps the governor runs
    the steps at 1 thread, probing 2 threads rarely. When 2 threads pay again (107 us), it goes
    back to them within 1,100 steps (probes at most 1,024 steps apart)."""
    rng = np.random.default_rng(1)
    n = 4000
    t1 = 146e3 * rng.uniform(0.95, 1.05, n)
    t2 = np.where(np.arange(n) < 2000, 240e3, 107e3) * rng.uniform(0.95, 1.05, n)
    caps = _governor(t1, t2)
    assert (caps[100:2000] == 1).mean() > 0.98, caps[:200]
    back = 2000 + np.flatnonzero(caps[2000:] == 0)
    # after the switch back, 2 threads for good (probes of 1 thread aside)
    switch = next(i for i in range(2000, n - 64) if (caps[i:i + 64] == 0).all())
    assert switch < 3100, switch
    assert (caps[switch:] == 0).mean() > 0.98
    assert len(back) > 0


def test_step_governor_probes_are_counted_in_a_real_fit():
    """The governor is wired into the training step: a 2-thread fit of S's size runs probe steps
    (counted in the pool's stats) and gives the bits of a 1-thread fit; switched off, it runs
    none."""
    import layerprop as lp
    from layerprop import _core
    rng = np.random.default_rng(2)
    X = rng.standard_normal((32 * 120, 784), dtype=np.float32)
    y = rng.integers(0, 10, 32 * 120)
    old = lp.get_num_threads()
    out = {}
    try:
        for nt in (1, 2):
            lp.set_num_threads(nt)
            before = _core._pool_stats()["step_probes"]
            model = lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=3)
            model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.01, momentum=0.9))
            model.fit(X, y, epochs=1, batch_size=32, shuffle=False, progress=False)
            out[nt] = [np.array(v) for v in model.parameters().values()]
            probes = _core._pool_stats()["step_probes"] - before
            assert (probes == 0) if nt == 1 else (probes >= 1), (nt, probes)
        _core._set_step_governor(False)
        before = _core._pool_stats()["step_probes"]
        model = lp.Sequential(lp.Linear(784, 128), lp.ReLU(), lp.Linear(128, 10), seed=3)
        model.compile(loss="cross_entropy", optimizer=lp.SGD(lr=0.01, momentum=0.9))
        model.fit(X, y, epochs=1, batch_size=32, shuffle=False, progress=False)
        assert _core._pool_stats()["step_probes"] == before
    finally:
        _core._set_step_governor(True)
        lp.set_num_threads(old)
    for a, b in zip(out[1], out[2]):
        assert a.tobytes() == b.tobytes()
