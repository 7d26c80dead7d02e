// Optimizer loops, compiled three times: portable (optim.cpp), AVX2 (optim_avx2.cpp) and
// AVX-512 (optim_avx512.cpp). Included inside a namespace that defines
// kQuotientByDoubleReciprocal (optim/adam.hpp); needs <cmath>, <cstdint>, <string>,
// <type_traits>, common.hpp and optim.hpp before it. Constants travel by value and pointers are __restrict, so each variant
// is one straight vectorizable loop over [lo, hi); per-element branches are resolved at
// compile time. Each rule lives in optim/<name>.hpp; LAYERPROP_OPTIMIZERS registers it.

inline void check_finite(const char* name, double v) {
  if (!std::isfinite(v)) throw ValueError(std::string(name) + ": expected a finite number, got " + std::to_string(v));
}
inline void check_nonneg(const char* name, double v) {
  if (!(std::isfinite(v) && v >= 0))
    throw ValueError(std::string(name) + ": expected a finite number >= 0, got " + std::to_string(v));
}
inline void check_unit(const char* name, double v) {  // [0, 1)
  if (!(v >= 0 && v < 1)) throw ValueError(std::string(name) + ": must be in [0, 1), got " + std::to_string(v));
}

#include "optim/sgd.hpp"
#include "optim/adam.hpp"
#include "optim/rmsprop.hpp"
#include "optim/adagrad.hpp"

// One optimizer step on elements [lo, hi); `step` is the tensor's step number (from 1).
template <class T>
void optimizer_range(const OptConfig& c, T* p, const T* g, T* const* s, int64_t lo, int64_t hi,
                     int64_t step) {
  switch (c.kind) {
#define LAYERPROP_OPT_CASE(kind, file, rule) \
  case OptKind::kind: return rule::range<T>(c, p, g, s, lo, hi, step);
    LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_CASE)
#undef LAYERPROP_OPT_CASE
    default: return;
  }
}

// The build's entry points, one per element type (optim.cpp picks a build at run time).
void optimizer_range_f32(const OptConfig& c, float* p, const float* g, float* const* s, int64_t lo, int64_t hi,
                         int64_t step) {
  optimizer_range<float>(c, p, g, s, lo, hi, step);
}
void optimizer_range_f64(const OptConfig& c, double* p, const double* g, double* const* s, int64_t lo, int64_t hi,
                         int64_t step) {
  optimizer_range<double>(c, p, g, s, lo, hi, step);
}
