// Kernels on NumPy arrays: test hooks (the optimized GEMM and its naive twin, the element-wise
// kernels) and fit's shuffle (_permutation).
#include <utility>

#include "common.hpp"
#include "layerprop/dropout.hpp"
#include "layerprop/eltwise.hpp"
#include "layerprop/gemm.hpp"

namespace py = pybind11;
using namespace lp;

template <class T>
static py::array_t<T> run_gemm(const py::handle& a_obj, const py::handle& b_obj, bool ta, bool tb,
                               bool naive, const py::handle& c_obj) {
  auto a = bind::as_exact<T>(a_obj, "a", 2);
  auto b = bind::as_exact<T>(b_obj, "b", 2);
  const int64_t M = ta ? a.shape(1) : a.shape(0), K = ta ? a.shape(0) : a.shape(1);
  const int64_t Kb = tb ? b.shape(1) : b.shape(0), N = tb ? b.shape(0) : b.shape(1);
  if (K != Kb)
    throw ValueError("b: inner dimensions differ: op(a) has " + std::to_string(K) +
                     " columns, op(b) has " + std::to_string(Kb) + " rows");
  py::array_t<T> c({M, N});
  const bool acc = !c_obj.is_none();  // accumulate onto a copy of c
  if (acc) {
    auto c0 = bind::as_exact<T>(c_obj, "c", 2);
    if (c0.shape(0) != M || c0.shape(1) != N) throw ValueError("c: expected shape (" + std::to_string(M) + ", " + std::to_string(N) + ")");
    std::copy(c0.data(), c0.data() + M * N, c.mutable_data());
  }
  const T* A = a.data();
  const T* B = b.data();
  T* C = c.mutable_data();
  const int64_t lda = a.shape(1), ldb = b.shape(1);
  {
    py::gil_scoped_release nogil;
    if (naive) kern::gemm_naive<T>(ta, tb, M, N, K, A, lda, B, ldb, C, N, acc);
    else kern::gemm<T>(ta, tb, M, N, K, A, lda, B, ldb, C, N, acc);
  }
  return c;
}

static py::object gemm_dispatch(const py::array& a, const py::array& b, bool ta, bool tb, bool naive,
                                const py::object& c) {
  if (a.dtype().is(py::dtype::of<float>())) return run_gemm<float>(a, b, ta, tb, naive, c);
  if (a.dtype().is(py::dtype::of<double>())) return run_gemm<double>(a, b, ta, tb, naive, c);
  throw TypeError("a: expected dtype float32 or float64, got " + bind::dtype_str(a));
}

// The element-wise kernels on 2-D arrays of one dtype: "forward" y = f(x); "backward"
// dy * f'(x, y); "bias_act" (x + bias, f(x + bias)); "colsum" column sums of x.
template <class T>
static py::object run_eltwise(const std::string& op, const py::handle& x_obj, const py::handle& o_obj,
                              int act, const ActSettings& settings) {
  auto x = bind::as_exact<T>(x_obj, "x", 2);
  const int64_t R = x.shape(0), C = x.shape(1), n = R * C;
  if (act < 0 || act >= static_cast<int>(Act::Count)) throw ValueError("act: unknown activation");
  const Act a = static_cast<Act>(act);
  const kern::ActParams<T> s(settings);
  py::array_t<T> out({R, C});
  if (op == "forward") {
    kern::act_forward<T>(out.mutable_data(), x.data(), n, a, s);
    return std::move(out);
  }
  if (op == "colsum") {
    py::array_t<T> db(C);
    kern::colsum<T>(db.mutable_data(), x.data(), R, C, false);
    return std::move(db);
  }
  if (op == "backward") {  // o = (dy, y)
    auto t = o_obj.cast<py::tuple>();
    auto dy = bind::as_exact<T>(t[0], "dy", 2);
    auto y = bind::as_exact<T>(t[1], "y", 2);
    if (dy.size() != n || y.size() != n) throw ValueError("dy, y: expected the shape of x");
    kern::act_backward<T>(out.mutable_data(), dy.data(), x.data(), y.data(), n, a, s, false);
    return std::move(out);
  }
  if (op == "bias_act") {  // o = bias (C,)
    auto bias = bind::as_exact<T>(o_obj, "bias", 1);
    if (bias.shape(0) != C) throw ValueError("bias: expected one value per column");
    py::array_t<T> z({R, C});
    std::copy(x.data(), x.data() + n, z.mutable_data());
    kern::bias_act<T>(z.mutable_data(), C, R, C, bias.data(), a, s, out.mutable_data(), C);
    return py::make_tuple(z, out);
  }
  throw ValueError("op: expected forward, backward, bias_act or colsum, got " + op);
}

void bind_kernels(py::module_& m) {
  m.def("_eltwise", [](const std::string& op, const py::array& x, const py::object& other, int act,
                       double slope, double alpha, double beta, double threshold) -> py::object {
    ActSettings s;
    s.negative_slope = slope;
    s.alpha = alpha;
    s.beta = beta;
    s.threshold = threshold;
    if (x.dtype().is(py::dtype::of<float>())) return run_eltwise<float>(op, x, other, act, s);
    if (x.dtype().is(py::dtype::of<double>())) return run_eltwise<double>(op, x, other, act, s);
    throw TypeError("x: expected dtype float32 or float64, got " + bind::dtype_str(x));
  }, py::arg("op"), py::arg("x"), py::arg("other") = py::none(), py::arg("act") = 0, py::arg("slope") = 0.0,
        py::arg("alpha") = 1.0, py::arg("beta") = 1.0, py::arg("threshold") = 20.0,
        "The element-wise kernels (tests); slope: LeakyReLU's negative slope; alpha: ELU; beta, threshold: Softplus.");
  m.def("_permutation", [](int64_t n, uint64_t seed) {
    if (n < 0 || n > (int64_t(1) << 40)) throw ValueError("n: expected 0 <= n <= 2**40, got " + std::to_string(n));
    py::array_t<int64_t> out(n);
    int64_t* p = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      // Fisher-Yates over 0..n-1 driven by splitmix64 from `seed`, each bound drawn without
      // bias (Lemire's multiply-and-reject): fit's shuffle, a few ns an element against
      // NumPy's permutation at 12-14 (21-25 us for digits' 1,797 rows).
      uint64_t x = seed;
      auto next = [&x] {  // the sequence mix64(seed), mix64(seed + golden), ...
        const uint64_t z = kern::mix64(x);
        x += 0x9E3779B97F4A7C15ull;
        return z;
      };
      for (int64_t i = 0; i < n; ++i) p[i] = i;
      for (int64_t i = n - 1; i > 0; --i) {
        const uint64_t bound = static_cast<uint64_t>(i) + 1;
        __uint128_t m = static_cast<__uint128_t>(next()) * bound;
        if (static_cast<uint64_t>(m) < bound) {
          const uint64_t t = (0 - bound) % bound;
          while (static_cast<uint64_t>(m) < t) m = static_cast<__uint128_t>(next()) * bound;
        }
        std::swap(p[i], p[static_cast<int64_t>(m >> 64)]);
      }
    }
    return out;
  }, py::arg("n"), py::arg("seed"), "A uniformly random permutation of range(n) from a 64-bit seed (fit's shuffle).");
  m.def("_gemm", [](const py::array& a, const py::array& b, bool ta, bool tb, const py::object& c) {
    return gemm_dispatch(a, b, ta, tb, false, c);
  }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("c") = py::none(),
        "op(a) @ op(b) (+ c when given) with the optimized kernel (tests and benchmarks).");
  m.def("_gemm_naive", [](const py::array& a, const py::array& b, bool ta, bool tb, const py::object& c) {
    return gemm_dispatch(a, b, ta, tb, true, c);
  }, py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("c") = py::none(),
        "op(a) @ op(b) (+ c when given) with the naive triple loop.");
  m.def("_gemm_uses_direct", &kern::gemm_uses_direct, py::arg("m"), py::arg("n"), py::arg("k"));
}
