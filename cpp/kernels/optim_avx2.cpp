// The optimizer loops built with AVX2 (called only when the CPU has it). No FMA contraction:
// the arithmetic stays exactly that of the portable build and of PyTorch's update rules.
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "layerprop/common.hpp"
#include "layerprop/optim.hpp"

namespace lp::kern::avx2 {
// Adam divides sqrt(v) by bias_correction2 ** 0.5 directly here (see optim/adam.hpp).
constexpr bool kQuotientByDoubleReciprocal = false;
#include "optim_impl.hpp"

void optimizer_range_f32(const OptConfig& c, float* p, const float* g, float* const* s, int64_t lo,
                         int64_t hi, int64_t step) {
  optimizer_range<float>(c, p, g, s, lo, hi, step);
}
void optimizer_range_f64(const OptConfig& c, double* p, const double* g, double* const* s, int64_t lo,
                         int64_t hi, int64_t step) {
  optimizer_range<double>(c, p, g, s, lo, hi, step);
}

}  // namespace lp::kern::avx2
