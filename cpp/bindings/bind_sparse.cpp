// Test hooks: the sparse (CSR) Linear kernels and their naive twins on NumPy arrays.
#include "common.hpp"
#include "layerprop/sparse.hpp"

namespace py = pybind11;
using namespace lp;

namespace {

struct Csr {
  py::array_t<int64_t, py::array::c_style> ptr, idx;
  int64_t N = 0;
};

// indptr / indices of a CSR matrix with `cols` columns, fully checked (these hooks take
// arbitrary arrays).
Csr check_csr(const py::handle& p, const py::handle& i, int64_t values, int64_t cols) {
  Csr c{bind::as_exact<int64_t>(p, "indptr", 1), bind::as_exact<int64_t>(i, "indices", 1)};
  c.N = c.ptr.shape(0) - 1;
  const int64_t nnz = c.idx.shape(0);
  if (c.N < 0) throw ValueError("indptr: expected at least one element");
  if (values != nnz) throw ValueError("data: expected as many values as indices");
  const int64_t* q = c.ptr.data();
  if (q[0] != 0 || q[c.N] != nnz) throw ValueError("indptr: must run from 0 to nnz");
  for (int64_t r = 0; r < c.N; ++r)
    if (q[r + 1] < q[r]) throw ValueError("indptr: must be non-decreasing");
  for (int64_t k = 0; k < nnz; ++k)
    if (c.idx.data()[k] < 0 || c.idx.data()[k] >= cols) throw ValueError("indices: column out of range");
  return c;
}

template <class T>
py::array_t<T> forward(const py::handle& p, const py::handle& i, const py::handle& v, const py::handle& w_obj,
                       bool naive) {
  auto val = bind::as_exact<T>(v, "data", 1);
  auto W = bind::as_exact<T>(w_obj, "weight", 2);
  const int64_t OUT = W.shape(0), IN = W.shape(1);
  Csr c = check_csr(p, i, val.shape(0), IN);
  py::array_t<T> y({c.N, OUT});
  if (naive) kern::csr_linear_forward_naive<T>(y.mutable_data(), c.ptr.data(), c.idx.data(), val.data(), c.N, W.data(), OUT, IN);
  else kern::csr_linear_forward<T>(y.mutable_data(), OUT, c.ptr.data(), c.idx.data(), val.data(), c.N, W.data(), OUT, IN,
                                   nullptr);
  return y;
}

template <class T>
py::array_t<T> weight_grad(const py::handle& p, const py::handle& i, const py::handle& v, const py::handle& dz_obj,
                           int64_t cols, const py::handle& acc_obj, bool naive) {
  auto val = bind::as_exact<T>(v, "data", 1);
  auto dz = bind::as_exact<T>(dz_obj, "dz", 2);
  if (cols < 1) throw ValueError("n_cols: expected >= 1");
  Csr c = check_csr(p, i, val.shape(0), cols);
  if (dz.shape(0) != c.N) throw ValueError("dz: expected one row per CSR row");
  const int64_t OUT = dz.shape(1);
  py::array_t<T> dW({OUT, cols});
  const bool acc = !acc_obj.is_none();
  if (acc) {
    auto a = bind::as_exact<T>(acc_obj, "accumulate", 2);
    if (a.shape(0) != OUT || a.shape(1) != cols) throw ValueError("accumulate: expected shape (out, n_cols)");
    std::copy(a.data(), a.data() + OUT * cols, dW.mutable_data());
  }
  if (naive) kern::csr_weight_grad_naive<T>(dW.mutable_data(), dz.data(), c.ptr.data(), c.idx.data(), val.data(), c.N, OUT, cols, acc);
  else kern::csr_weight_grad<T>(dW.mutable_data(), dz.data(), OUT, c.ptr.data(), c.idx.data(), val.data(), c.N, OUT, cols, acc);
  return dW;
}

template <class F32, class F64>
py::object by_dtype(const py::handle& v, F32 f32, F64 f64) {
  if (!py::isinstance<py::array>(v)) throw TypeError("data: expected a numpy.ndarray");
  py::array a = py::reinterpret_borrow<py::array>(v);
  if (a.dtype().is(py::dtype::of<float>())) return f32();
  if (a.dtype().is(py::dtype::of<double>())) return f64();
  throw TypeError("data: expected dtype float32 or float64, got " + bind::dtype_str(a));
}

}  // namespace

void bind_sparse(py::module_& m) {
  m.def("_csr_linear", [](const py::handle& p, const py::handle& i, const py::handle& v, const py::handle& w, bool naive) {
    return by_dtype(v, [&] { return py::object(forward<float>(p, i, v, w, naive)); },
                    [&] { return py::object(forward<double>(p, i, v, w, naive)); });
  }, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("weight"), py::arg("naive") = false,
     "X (CSR) @ weight.T with the sparse kernel or its naive twin (tests).");
  m.def("_csr_weight_grad", [](const py::handle& p, const py::handle& i, const py::handle& v, const py::handle& dz,
                               int64_t cols, const py::handle& acc, bool naive) {
    return by_dtype(v, [&] { return py::object(weight_grad<float>(p, i, v, dz, cols, acc, naive)); },
                    [&] { return py::object(weight_grad<double>(p, i, v, dz, cols, acc, naive)); });
  }, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("dz"), py::arg("n_cols"),
     py::arg("accumulate") = py::none(), py::arg("naive") = false,
     "dz.T @ X (CSR) (+ accumulate) with the sparse kernel or its naive twin (tests).");
}
