// layerprop._core: the C++ core behind a thin boundary (validation and GIL release only).
#include <pybind11/pybind11.h>

#include "layerprop/common.hpp"
#include "layerprop/runtime.hpp"

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
  m.def("forked_after_pool", &lp::forked_after_pool,
        "True in a process forked after its parent started OpenMP's threads: kernels run serially here.");
  bind_protocol(m);
  bind_model(m);
  bind_kernels(m);
  bind_sparse(m);
  bind_parts(m);
}
