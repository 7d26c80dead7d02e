// The element-wise loops built with AVX2 (called only when the CPU has it). No FMA
// contraction: an element's value is exactly that of the portable build.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "layerprop/common.hpp"

namespace lp::kern::avx2 {
#include "eltwise_impl.hpp"

#define LP_ELTWISE_EXPORT(T, S)                                                                   \
  void act_fwd_##S(T* y, const T* x, int64_t n, Act a, T s) { act_fwd_range<T>(y, x, n, a, s); } \
  void act_bwd_##S(T* dx, const T* dy, const T* x, const T* y, int64_t n, Act a, T s, bool acc) { \
    act_bwd_range<T>(dx, dy, x, y, n, a, s, acc);                                                 \
  }                                                                                               \
  void bias_act_##S(T* C, int64_t ldc, int64_t mr, int64_t nr, const T* b, Act a, T s, T* out,   \
                    int64_t ld) {                                                                 \
    bias_act_range<T>(C, ldc, mr, nr, b, a, s, out, ld);                                          \
  }                                                                                               \
  void colsum_##S(T* db, const T* dz, int64_t N, int64_t ldz, int64_t nc, bool acc) {             \
    colsum_range<T>(db, dz, N, ldz, nc, acc);                                                     \
  }                                                                                               \
  void add_##S(T* y, const T* a, const T* m, int64_t n, bool acc) { add_range<T>(y, a, m, n, acc); }

LP_ELTWISE_EXPORT(float, f32)
LP_ELTWISE_EXPORT(double, f64)
#undef LP_ELTWISE_EXPORT

}  // namespace lp::kern::avx2
