// The element-wise loops built with AVX2 (called only when the CPU has it). No FMA
// contraction: an element's value is exactly that of the portable build.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "layerprop/common.hpp"
#include "layerprop/eltwise.hpp"

namespace lp::kern::avx2 {
#include "eltwise_impl.hpp"

#define LP_ELTWISE_EXPORT(T, S)                                                                   \
  void act_fwd_##S(T* y, const T* x, int64_t n, Act a, ActParams<T> s) { act_fwd_range<T>(y, x, n, a, s); } \
  void act_bwd_##S(T* dx, const T* dy, const T* x, const T* y, int64_t n, Act a, ActParams<T> s, bool acc) { \
    act_bwd_range<T>(dx, dy, x, y, n, a, s, acc);                                                 \
  }                                                                                               \
  void colsum_##S(T* db, const T* dz, int64_t N, int64_t ldz, int64_t nc, bool acc) {             \
    colsum_range<T>(db, dz, N, ldz, nc, acc);                                                     \
  }                                                                                               \
  void add_##S(T* y, const T* a, const T* m, int64_t n, bool acc) { add_range<T>(y, a, m, n, acc); } \
  bool finite_##S(const T* p, int64_t n) { return finite_range<T>(p, n); }                       \
  void exp_##S(T* v, int64_t n) { exp_range<T>(v, n); }

LP_ELTWISE_EXPORT(float, f32)
LP_ELTWISE_EXPORT(double, f64)
#undef LP_ELTWISE_EXPORT

// The GEMM epilogue on a tile: written out for the cheap activations on whole 8-float vectors
// (the compiler's version of the loop above fully unrolls and then stays scalar). Each value is
// one add and one select or multiply, so the bits equal those of bias_act_range.
void bias_act_f32(float* C, int64_t ldc, int64_t mr, int64_t nr, const float* b, Act a, ActParams<float> s,
                  float* out, int64_t ld) {
  if (nr % 8 != 0 || !(a == Act::Identity || a == Act::ReLU || a == Act::LeakyReLU)) {
    bias_act_range<float>(C, ldc, mr, nr, b, a, s, out, ld);
    return;
  }
  const __m256 zero = _mm256_setzero_ps(), slope = _mm256_set1_ps(s.negative_slope);
  for (int64_t i = 0; i < mr; ++i) {
    float* c = C + i * ldc;
    float* o = out ? out + i * ld : nullptr;
    for (int64_t j = 0; j < nr; j += 8) {
      __m256 v = _mm256_loadu_ps(c + j);
      if (b) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
        _mm256_storeu_ps(c + j, v);
      }
      if (!o) continue;
      const __m256 pos = _mm256_cmp_ps(v, zero, _CMP_GT_OQ);  // x > 0 (false for NaN)
      __m256 r = v;
      if (a == Act::ReLU) r = _mm256_andnot_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ), v);  // x < 0 ? 0 : x
      else if (a == Act::LeakyReLU) r = _mm256_blendv_ps(_mm256_mul_ps(v, slope), v, pos);
      _mm256_storeu_ps(o + j, r);
    }
  }
}
void bias_act_f64(double* C, int64_t ldc, int64_t mr, int64_t nr, const double* b, Act a, ActParams<double> s,
                  double* out, int64_t ld) {
  bias_act_range<double>(C, ldc, mr, nr, b, a, s, out, ld);
}

}  // namespace lp::kern::avx2
