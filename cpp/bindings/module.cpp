// layerprop._core: the C++ core behind a thin boundary (validation and GIL release only).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "layerprop/common.hpp"
#include "layerprop/gemm.hpp"
#include "layerprop/model.hpp"
#include "layerprop/runtime.hpp"

#include <atomic>
#include <chrono>
#include <climits>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

void bind_model(py::module_& m);
void bind_kernels(py::module_& m);
void bind_sparse(py::module_& m);
void bind_protocol(py::module_& m);
void bind_parts(py::module_& m);

#ifndef LAYERPROP_VERSION
#define LAYERPROP_VERSION "0.0.0"
#endif
#ifndef LAYERPROP_COMPILER
#define LAYERPROP_COMPILER "unknown"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "layerprop C++ core";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lp::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const lp::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const lp::MemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  py::register_exception<lp::NonFiniteError>(m, "NonFiniteError", PyExc_RuntimeError);
  m.def("build_info", [] {
    py::dict d;
    d["version"] = LAYERPROP_VERSION;
    d["simd"] = lp::simd_name();
    d["gemm_avx512"] = lp::use_avx512();
    d["openmp"] = lp::have_openmp();
    d["num_threads"] = lp::get_num_threads();
    d["compiler"] = LAYERPROP_COMPILER;
    const auto& f = lp::cpu_features();
    py::dict cpu;
    cpu["avx2"] = f.avx2;
    cpu["fma"] = f.fma;
    cpu["avx512f"] = f.avx512f;
    d["cpu"] = cpu;
    return d;
  });
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw lp::ValueError("n: expected a thread count >= 1, got " + std::to_string(n));
    lp::set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &lp::get_num_threads);
  m.def("_pool_stats", [] {
    const lp::PoolStats s = lp::pool_stats();
    py::dict d;
    d["workers"] = s.workers;
    d["jobs"] = s.jobs;
    d["items_by_workers"] = s.items_by_workers;
    d["spin_us"] = s.spin_us;
    d["waits"] = s.waits;
    d["wait_ns"] = s.wait_ns;
    d["stalls"] = s.stalls;
    d["preempted_spins"] = s.preempted_spins;
    d["moves"] = s.moves;
    d["prewarms"] = s.prewarms;
    d["foreign_samples"] = s.foreign_samples;
    d["foreign_busy_samples"] = s.foreign_busy_samples;
    d["runnable_checks"] = s.runnable_checks;
    d["runnable_busy"] = s.runnable_busy;
    d["step_probes"] = s.step_probes;
    d["serial_steps"] = s.serial_steps;
    d["serial_switches"] = s.serial_switches;
    return d;
  }, "The pool's workers started, jobs run with workers, items the workers ran, spin time.");
  m.def("_set_packed_weights", [](bool on) { lp::set_packed_weights(on); }, py::arg("on"),
        "Whether predict and evaluate may keep a model's weights packed between calls "
        "(LAYERPROP_PACKED_WEIGHTS=0: off)");
  m.def("_set_step_governor", [](bool on) { lp::set_step_governor(on); }, py::arg("on"),
        "Whether training steps time themselves and run at 1 thread when that is faster (on by default; "
        "LAYERPROP_STEP_GOVERNOR=0: off)");
  m.def("_step_governor_run", [](const std::vector<int64_t>& t1_ns, const std::vector<int64_t>& t2_ns) {
    // The training step's governor (runtime.hpp) fed made-up step times: step i takes t1_ns[i]
    // at 1 thread and t2_ns[i] at the thread count set; returns the cap it chose for each step.
    if (t1_ns.size() != t2_ns.size()) throw py::value_error("t1_ns and t2_ns: different lengths");
    lp::StepGovernor g;
    std::vector<int> caps;
    caps.reserve(t1_ns.size());
    for (size_t i = 0; i < t1_ns.size(); ++i) {
      const int cap = g.next_cap();
      caps.push_back(cap);
      if (cap >= 0) g.record(cap == 1 ? t1_ns[i] : t2_ns[i], 1);
    }
    return caps;
  }, py::arg("t1_ns"), py::arg("t2_ns"));
  m.def("_set_gemm_shared", [](int mode) {
    if (mode < 0 || mode > 2) throw py::value_error("mode must be 0, 1 or 2");
    lp::kern::set_gemm_shared(mode);
  }, py::arg("mode"),
        "Whether the rectangles of a multi-threaded product share their packed panels: 1 yes (the default), "
        "0 each packs its own (LAYERPROP_GEMM_SHARED=0), 2 each packs a private copy of the blocks it reads "
        "(the path taken when a block's packer is away; for tests). The results are the same bits.");
  m.def("_set_gemm_inplace", [](bool on) { lp::kern::set_gemm_inplace(on); }, py::arg("on"),
        "Whether small products with B not transposed read their operands in place instead of packing "
        "them (LAYERPROP_GEMM_INPLACE=0: off); the results are the same bits either way.");
  m.def("_set_gemm_a_outer", [](bool on) { lp::kern::set_gemm_a_outer(on); }, py::arg("on"),
        "Whether packed products with A not transposed keep A's tiles outside, read in place, while B's panels "
        "stream past (LAYERPROP_GEMM_A_OUTER=0: off); the results are the same bits either way.");
  m.def("_set_keep_workers_asleep", [](bool on) { lp::set_keep_workers_asleep(on); }, py::arg("on"));
  m.def("_set_foreign_probe", [](bool on) { lp::set_foreign_probe(on); }, py::arg("on"),
        "Turn the probe of other busy threads in this process on or off (it is on by default).");
  m.def("_set_spin_us", [](int us) {
    if (us < 0 || us > 1000000) throw lp::ValueError("spin_us: expected 0..1000000 microseconds, got " + std::to_string(us));
    lp::set_spin_us(us);
  }, py::arg("spin_us"));
  m.def("_work_thresholds", [] {
    py::dict d;
    for (int w = 0; w < static_cast<int>(lp::Work::Count); ++w) {
      const int64_t v = lp::work_threshold(static_cast<lp::Work>(w));
      d[lp::work_name(static_cast<lp::Work>(w))] = v == INT64_MAX ? py::object(py::none()) : py::object(py::int_(v));
    }
    return d;
  }, "Units of work per thread for each kind of parallel loop (None: never parallel).");
  m.def("_set_work_threshold", [](const std::string& name, py::object units) {
    for (int w = 0; w < static_cast<int>(lp::Work::Count); ++w)
      if (name == lp::work_name(static_cast<lp::Work>(w))) {
        int64_t v = 0;
        if (!units.is_none()) {
          v = units.cast<int64_t>();
          if (v < 1) throw lp::ValueError("units: expected a positive count or None, got " + std::to_string(v));
        }
        lp::set_work_threshold(static_cast<lp::Work>(w), v);
        return;
      }
    throw lp::ValueError("name: unknown kind of work '" + name + "'");
  }, py::arg("name"), py::arg("units"));
  m.def("_calibrate", [](const std::string& name, double budget_s, double margin) {
    if (!(budget_s > 0 && budget_s <= 10)) throw lp::ValueError("budget_s: expected seconds in (0, 10]");
    if (!(margin >= 1 && margin <= 10)) throw lp::ValueError("margin: expected a factor in [1, 10]");
    for (int w = 0; w < static_cast<int>(lp::Work::Count); ++w)
      if (name == lp::work_name(static_cast<lp::Work>(w))) {
        lp::CalibrationResult r;
        {
          py::gil_scoped_release release;
          r = lp::calibrate_work(static_cast<lp::Work>(w), budget_s, margin);
        }
        py::dict d;
        d["kind"] = name;
        d["threads"] = r.threads;
        d["units_per_thread"] = r.units_per_thread > 0 ? py::object(py::int_(r.units_per_thread)) : py::object(py::none());
        d["units"] = r.units;
        d["serial_s"] = r.serial_s;
        d["pooled_s"] = r.pooled_s;
        return d;
      }
    throw lp::ValueError("name: unknown kind of work '" + name + "'");
  }, py::arg("name"), py::arg("budget_s") = 0.05, py::arg("margin") = 1.1,
        "Measure one kind of work serially and on the pool; returns the threshold it suggests.");
  m.def("_pool_selftest", [](int64_t n, int threads, int64_t throw_at, int sleep_every, int sleep_us) {
    if (n < 0 || n > 10000000) throw lp::ValueError("n: expected 0..10000000 items");
    if (threads < 1) throw lp::ValueError("threads: expected >= 1");
    if (sleep_every < 0 || sleep_us < 0 || sleep_us > 100000) throw lp::ValueError("sleep_every, sleep_us: out of range");
    // Every item adds 1 to its own counter (so each must run exactly once) and records whether
    // it ran on the calling thread; some sleep, as a descheduled thread would.
    std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
    std::vector<std::atomic<int>> on_caller(static_cast<size_t>(n));
    const auto caller = std::this_thread::get_id();
    {
      py::gil_scoped_release release;
      lp::parallel_for(n, threads, [&](int64_t i) {
        runs[i].fetch_add(1);
        on_caller[i].store(std::this_thread::get_id() == caller ? 1 : 0);
        if (sleep_every > 0 && i % sleep_every == 0) std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
        if (i == throw_at) throw lp::ValueError("item " + std::to_string(i) + " failed on purpose");
      });
    }
    py::list r, c;
    for (int64_t i = 0; i < n; ++i) {
      r.append(runs[i].load());
      c.append(on_caller[i].load());
    }
    return py::make_tuple(r, c);
  }, py::arg("n"), py::arg("threads"), py::arg("throw_at") = -1, py::arg("sleep_every") = 0, py::arg("sleep_us") = 0,
        "Tests: run n items on the pool; returns (times each item ran, whether it ran on the caller).");
  m.def("forked_after_pool", &lp::forked_after_pool,
        "True in a process forked after its parent started layerprop's worker threads: kernels run serially here.");
  bind_protocol(m);
  bind_model(m);
  bind_kernels(m);
  bind_sparse(m);
  bind_parts(m);
}
