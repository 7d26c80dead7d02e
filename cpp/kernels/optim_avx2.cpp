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

}  // namespace lp::kern::avx2
