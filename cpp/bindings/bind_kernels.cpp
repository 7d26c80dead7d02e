// Test hooks: the optimized GEMM and its naive twin on NumPy arrays.
#include "common.hpp"
#include "layerprop/gemm.hpp"

namespace py = pybind11;
using namespace lp;

template <class T>
static py::array_t<T> run_gemm(const py::handle& a_obj, const py::handle& b_obj, bool ta, bool tb,
                               bool naive) {
  auto a = bind::as_exact<T>(a_obj, "a", 2);
  auto b = bind::as_exact<T>(b_obj, "b", 2);
  const int64_t M = ta ? a.shape(1) : a.shape(0), K = ta ? a.shape(0) : a.shape(1);
  const int64_t Kb = tb ? b.shape(1) : b.shape(0), N = tb ? b.shape(0) : b.shape(1);
  if (K != Kb)
    throw ValueError("b: inner dimensions differ: op(a) has " + std::to_string(K) +
                     " columns, op(b) has " + std::to_string(Kb) + " rows");
  py::array_t<T> c({M, N});
  const T* A = a.data();
  const T* B = b.data();
  T* C = c.mutable_data();
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  {
    py::gil_scoped_release nogil;
    if (naive) kern::gemm_naive<T>(ta, tb, M, N, K, A, lda, B, ldb, C, N, false);
    else kern::gemm<T>(ta, tb, M, N, K, A, lda, B, ldb, C, N, false);
  }
  return c;
}

static py::object gemm_dispatch(const py::array& a, const py::array& b, bool ta, bool tb, bool naive) {
  if (a.dtype().is(py::dtype::of<float>())) return run_gemm<float>(a, b, ta, tb, naive);
  if (a.dtype().is(py::dtype::of<double>())) return run_gemm<double>(a, b, ta, tb, naive);
  throw TypeError("a: expected dtype float32 or float64, got " + bind::dtype_str(a));
}

void bind_kernels(py::module_& m) {
  m.def("_gemm", [](const py::array& a, const py::array& b, bool ta, bool tb) {
    return gemm_dispatch(a, b, ta, tb, false);
  }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        "op(a) @ op(b) with the optimized kernel (tests and benchmarks).");
  m.def("_gemm_naive", [](const py::array& a, const py::array& b, bool ta, bool tb) {
    return gemm_dispatch(a, b, ta, tb, true);
  }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        "op(a) @ op(b) with the naive triple loop.");
  m.def("_gemm_uses_direct", &kern::gemm_uses_direct, py::arg("m"), py::arg("n"), py::arg("k"));
}
