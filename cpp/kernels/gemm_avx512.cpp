// AVX-512F GEMM micro-kernels, compiled with -mavx512f -mfma and called only when the CPU has
// AVX-512F (lp::use_avx512). They compute 12 x 16 tiles: two of the AVX2 kernel's 6-row
// micro-panels at once, one zmm accumulator per row. Each output is the same fma chain over k,
// in the same order, from a zero start, added to C once per depth block: the AVX2 kernel's
// bits exactly. What changes is the cost per k: one 16-float load of B and twelve fmas that
// take their A value as an embedded broadcast, against the AVX2 tile's two loads, six
// broadcasts and twelve fmas for half the work. The B micro-panel stays the same kc x 16.
#include <immintrin.h>

#include <cstdint>

namespace lp::kern::avx512 {

namespace {
inline void store_12x16(const __m512 (&acc)[12], float* __restrict c, int64_t ldc, bool accumulate) {
#pragma GCC unroll 12
  for (int r = 0; r < 12; ++r) {
    float* cr = c + r * ldc;
    _mm512_storeu_ps(cr, accumulate ? _mm512_add_ps(_mm512_loadu_ps(cr), acc[r]) : acc[r]);
  }
}
}  // namespace

namespace {
// The 12 x 16 tile: zero accumulators, for each k one 16-float load of B and the twelve fmas
// `rows(k, bv, acc)` (each reading its A value where that kernel keeps it), then the store.
template <class Rows>
[[gnu::always_inline]] inline void tile_12x16(int64_t kc, const float* __restrict b, float* __restrict c,
                                              int64_t ldc, bool accumulate, Rows rows) {
  __m512 acc[12];
#pragma GCC unroll 12
  for (int r = 0; r < 12; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    rows(k, _mm512_loadu_ps(b), acc);
    b += 16;
  }
  store_12x16(acc, c, ldc, accumulate);
}
}  // namespace

// c (12 x 16) (+)= two consecutive packed 6-row micro-panels (a, a + 6 * kc) . b_panel
// (kc x 16): row r's k-th value is a[k * 6 + r] for r < 6, a[6 * kc + k * 6 + r - 6] after.
void ukernel2_f32(int64_t kc, const float* __restrict a, const float* __restrict b,
                  float* __restrict c, int64_t ldc, bool accumulate) {
  const float* a1 = a + 6 * kc;
  tile_12x16(kc, b, c, ldc, accumulate, [&](int64_t k, __m512 bv, __m512 (&acc)[12]) {
    const float* p0 = a + k * 6;
    const float* p1 = a1 + k * 6;
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p0[r]), bv, acc[r]);
#pragma GCC unroll 6
    for (int r = 0; r < 6; ++r) acc[6 + r] = _mm512_fmadd_ps(_mm512_set1_ps(p1[r]), bv, acc[6 + r]);
  });
}

// The same tile with A read in place: row r of the 12 x kc block starts at a + r * lda (four
// base pointers, three rows each, so the addresses stay base + {0, 1, 2} * lda).
void ukernel2_rows_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                       float* __restrict c, int64_t ldc, bool accumulate) {
  const float* base[4] = {a, a + 3 * lda, a + 6 * lda, a + 9 * lda};
  tile_12x16(kc, b, c, ldc, accumulate, [&](int64_t k, __m512 bv, __m512 (&acc)[12]) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      const float* q = base[g] + k;
      acc[3 * g] = _mm512_fmadd_ps(_mm512_set1_ps(q[0]), bv, acc[3 * g]);
      acc[3 * g + 1] = _mm512_fmadd_ps(_mm512_set1_ps(q[lda]), bv, acc[3 * g + 1]);
      acc[3 * g + 2] = _mm512_fmadd_ps(_mm512_set1_ps(q[2 * lda]), bv, acc[3 * g + 2]);
    }
  });
}

}  // namespace lp::kern::avx512
