// Validation helpers shared by the bind_*.cpp files: every check a user can trigger,
// with the argument's name and what was expected.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "layerprop/common.hpp"

namespace lp::bind {
namespace py = pybind11;

template <class T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// An array of exactly dtype T and `ndim` dimensions (refuses anything else), C-contiguous: an
// array in another layout (Fortran order, a strided view) is copied into a C-contiguous one,
// which the call then holds (these arrays are only read).
template <class T>
py::array_t<T, py::array::c_style> as_exact(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj))
    throw TypeError(std::string(name) + ": expected a numpy.ndarray of " + dtype_name<T>() + ", got " +
                    py::str(py::type::of(obj)).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw TypeError(std::string(name) + ": expected dtype " + dtype_name<T>() + ", got " + dtype_str(a));
  if (a.ndim() != ndim)
    throw ValueError(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style)) return py::array_t<T, py::array::c_style>(a);  // a C-order copy
  return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(a);
}

}  // namespace lp::bind
