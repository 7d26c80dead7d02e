// The optimizer loops built with AVX-512F, 16 floats a vector (called only when the CPU has
// it). No FMA contraction: the arithmetic stays exactly that of the portable build and of
// PyTorch's update rules.
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "layerprop/common.hpp"
#include "layerprop/optim.hpp"

namespace lp::kern::avx512 {
// Adam's float quotient sqrt(v) / bias_correction2 ** 0.5 is a product in double here: the
// same bits (optim/adam.hpp), a sixth less of the divider's time.
constexpr bool kQuotientByDoubleReciprocal = true;
#include "optim_impl.hpp"

}  // namespace lp::kern::avx512
