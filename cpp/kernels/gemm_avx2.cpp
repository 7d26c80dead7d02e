// AVX2+FMA kernels, compiled with -mavx2 -mfma and called only when the CPU has both.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace lp::kern::avx2 {
#include "gemm_impl.hpp"

namespace {
// c (6 x 16 floats) (+)= A (6 x kc) . b_panel (kc x 16): 12 ymm accumulators. Row r's k-th
// value of A is a[k * 6 + r] from a packed panel, or a[r * lda + k] read in place: the same
// fma chain over k in the same order either way, so the same bits.
template <bool kInPlace>
[[gnu::always_inline]] inline void tile_6x16(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                      float* __restrict c, int64_t ldc, bool accumulate) {
  const int64_t rs = kInPlace ? lda : 1;  // step between rows of A
  const int64_t ks = kInPlace ? 1 : 6;    // step between k
  const float* a0 = a;
  const float* a1 = a + rs;
  const float* a2 = a + 2 * rs;
  const float* a3 = a + 3 * rs;
  const float* a4 = a + 4 * rs;
  const float* a5 = a + 5 * rs;
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    const int64_t o = k * ks;
    __m256 av;
    av = _mm256_broadcast_ss(a0 + o); c00 = _mm256_fmadd_ps(av, b0, c00); c01 = _mm256_fmadd_ps(av, b1, c01);
    av = _mm256_broadcast_ss(a1 + o); c10 = _mm256_fmadd_ps(av, b0, c10); c11 = _mm256_fmadd_ps(av, b1, c11);
    av = _mm256_broadcast_ss(a2 + o); c20 = _mm256_fmadd_ps(av, b0, c20); c21 = _mm256_fmadd_ps(av, b1, c21);
    av = _mm256_broadcast_ss(a3 + o); c30 = _mm256_fmadd_ps(av, b0, c30); c31 = _mm256_fmadd_ps(av, b1, c31);
    av = _mm256_broadcast_ss(a4 + o); c40 = _mm256_fmadd_ps(av, b0, c40); c41 = _mm256_fmadd_ps(av, b1, c41);
    av = _mm256_broadcast_ss(a5 + o); c50 = _mm256_fmadd_ps(av, b0, c50); c51 = _mm256_fmadd_ps(av, b1, c51);
    b += 16;
  }
  __m256 acc[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < 6; ++r) {
    float* cr = c + r * ldc;
    if (accumulate) {
      _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), acc[r][0]));
      _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), acc[r][1]));
    } else {
      _mm256_storeu_ps(cr, acc[r][0]);
      _mm256_storeu_ps(cr + 8, acc[r][1]);
    }
  }
}
}  // namespace

// c (6 x 16 floats) (+)= a_panel (kc x 6) . b_panel (kc x 16).
void ukernel_f32(int64_t kc, const float* __restrict a, const float* __restrict b,
                 float* __restrict c, int64_t ldc, bool accumulate) {
  tile_6x16<false>(kc, a, 0, b, c, ldc, accumulate);
}

// The same tile with A read in place: row r of the 6 x kc block starts at a + r * lda.
void ukernel_rows_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                      float* __restrict c, int64_t ldc, bool accumulate) {
  tile_6x16<true>(kc, a, lda, b, c, ldc, accumulate);
}

// c (6 x 8 doubles) (+)= a_panel (kc x 6) . b_panel (kc x 8).
void ukernel_f64(int64_t kc, const double* __restrict a, const double* __restrict b,
                 double* __restrict c, int64_t ldc, bool accumulate) {
  __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd();
  __m256d c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
  __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd();
  __m256d c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
  __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd();
  __m256d c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
    __m256d av;
    av = _mm256_broadcast_sd(a + 0); c00 = _mm256_fmadd_pd(av, b0, c00); c01 = _mm256_fmadd_pd(av, b1, c01);
    av = _mm256_broadcast_sd(a + 1); c10 = _mm256_fmadd_pd(av, b0, c10); c11 = _mm256_fmadd_pd(av, b1, c11);
    av = _mm256_broadcast_sd(a + 2); c20 = _mm256_fmadd_pd(av, b0, c20); c21 = _mm256_fmadd_pd(av, b1, c21);
    av = _mm256_broadcast_sd(a + 3); c30 = _mm256_fmadd_pd(av, b0, c30); c31 = _mm256_fmadd_pd(av, b1, c31);
    av = _mm256_broadcast_sd(a + 4); c40 = _mm256_fmadd_pd(av, b0, c40); c41 = _mm256_fmadd_pd(av, b1, c41);
    av = _mm256_broadcast_sd(a + 5); c50 = _mm256_fmadd_pd(av, b0, c50); c51 = _mm256_fmadd_pd(av, b1, c51);
    a += 6;
    b += 8;
  }
  __m256d acc[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < 6; ++r) {
    double* cr = c + r * ldc;
    if (accumulate) {
      _mm256_storeu_pd(cr, _mm256_add_pd(_mm256_loadu_pd(cr), acc[r][0]));
      _mm256_storeu_pd(cr + 4, _mm256_add_pd(_mm256_loadu_pd(cr + 4), acc[r][1]));
    } else {
      _mm256_storeu_pd(cr, acc[r][0]);
      _mm256_storeu_pd(cr + 4, acc[r][1]);
    }
  }
}

namespace {
// Sum of the 8 lanes in a fixed order.
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i tail_mask(int64_t n) {  // first n of 8 lanes
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}

// C[i,j] (+)= dot(A row i, B row j): four rows of B per pass, 8-wide partial sums, masked tail.
void dots_f32(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
              int64_t ldb, float* C, int64_t ldc, bool acc) {
  const int64_t K8 = K / 8 * 8;
  const __m256i mt = tail_mask(K - K8);
  for (int64_t i = 0; i < M; ++i) {
    const float* a = A + i * lda;
    float* c = C + i * ldc;
    int64_t j = 0;
    for (; j + 4 <= N; j += 4) {
      const float* b0 = B + j * ldb;
      const float* b1 = b0 + ldb;
      const float* b2 = b1 + ldb;
      const float* b3 = b2 + ldb;
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) {
        const __m256 av = _mm256_loadu_ps(a + k);
        s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b0 + k), s0);
        s1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b1 + k), s1);
        s2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b2 + k), s2);
        s3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b3 + k), s3);
      }
      if (K8 < K) {
        const __m256 av = _mm256_maskload_ps(a + K8, mt);
        s0 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b0 + K8, mt), s0);
        s1 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b1 + K8, mt), s1);
        s2 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b2 + K8, mt), s2);
        s3 = _mm256_fmadd_ps(av, _mm256_maskload_ps(b3 + K8, mt), s3);
      }
      const float r[4] = {hsum8(s0), hsum8(s1), hsum8(s2), hsum8(s3)};
      for (int q = 0; q < 4; ++q) c[j + q] = acc ? c[j + q] + r[q] : r[q];
    }
    for (; j < N; ++j) {
      const float* b0 = B + j * ldb;
      __m256 s0 = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b0 + k), s0);
      if (K8 < K) s0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + K8, mt), _mm256_maskload_ps(b0 + K8, mt), s0);
      const float r = hsum8(s0);
      c[j] = acc ? c[j] + r : r;
    }
  }
}

// K = 1, an outer product (the weight gradient of a batch of 1): C[i,:] (+)= a_i * b. Up to
// 64 columns of b stay in registers while the rows stream past.
void outer_f32(int64_t M, int64_t N, const float* a, int64_t stride_a, const float* b, float* C,
               int64_t ldc, bool acc) {
  for (int64_t j = 0; j < N; j += 64) {
    const int64_t w = std::min<int64_t>(64, N - j);
    const int64_t nv = w / 8;  // full vectors
    const __m256i mt = tail_mask(w - nv * 8);
    __m256 bv[8];
    for (int64_t v = 0; v < nv; ++v) bv[v] = _mm256_loadu_ps(b + j + 8 * v);
    const __m256 bt = _mm256_maskload_ps(b + j + 8 * nv, mt);
    for (int64_t i = 0; i < M; ++i) {
      const __m256 av = _mm256_set1_ps(a[i * stride_a]);
      float* c = C + i * ldc + j;
      if (acc) {
        for (int64_t v = 0; v < nv; ++v)
          _mm256_storeu_ps(c + 8 * v, _mm256_add_ps(_mm256_loadu_ps(c + 8 * v), _mm256_mul_ps(av, bv[v])));
        if (w > nv * 8)
          _mm256_maskstore_ps(c + 8 * nv, mt, _mm256_add_ps(_mm256_maskload_ps(c + 8 * nv, mt), _mm256_mul_ps(av, bt)));
      } else {
        for (int64_t v = 0; v < nv; ++v) _mm256_storeu_ps(c + 8 * v, _mm256_mul_ps(av, bv[v]));
        if (w > nv * 8) _mm256_maskstore_ps(c + 8 * nv, mt, _mm256_mul_ps(av, bt));
      }
    }
  }
}

// C[i, j:j+32] (+)= sum_k op(A)[i,k] * B[k, j:j+32]: 4 ymm accumulators per row, k in order.
void rows_f32(bool ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
              int64_t ldb, float* C, int64_t ldc, bool acc) {
  if (K == 1) {
    outer_f32(M, N, A, ta ? 1 : lda, B, C, ldc, acc);
    return;
  }
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    for (int64_t j = 0; j < N; j += 32) {
      const int64_t w = std::min<int64_t>(32, N - j);
      if (w == 32) {
        __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; ++k) {
          const __m256 av = _mm256_set1_ps(ta ? A[k * lda + i] : A[i * lda + k]);
          const float* b = B + k * ldb + j;
          c0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b), c0);
          c1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + 8), c1);
          c2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + 16), c2);
          c3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + 24), c3);
        }
        if (acc) {
          c0 = _mm256_add_ps(_mm256_loadu_ps(c + j), c0);
          c1 = _mm256_add_ps(_mm256_loadu_ps(c + j + 8), c1);
          c2 = _mm256_add_ps(_mm256_loadu_ps(c + j + 16), c2);
          c3 = _mm256_add_ps(_mm256_loadu_ps(c + j + 24), c3);
        }
        _mm256_storeu_ps(c + j, c0);
        _mm256_storeu_ps(c + j + 8, c1);
        _mm256_storeu_ps(c + j + 16, c2);
        _mm256_storeu_ps(c + j + 24, c3);
      } else {
        // Full 8-column vectors unmasked (masked stores are slow on some CPUs), then the tail.
        int64_t jj = j;
        for (; jj + 8 <= j + w; jj += 8) {
          __m256 c0 = _mm256_setzero_ps();
          for (int64_t k = 0; k < K; ++k) {
            const __m256 av = _mm256_set1_ps(ta ? A[k * lda + i] : A[i * lda + k]);
            c0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(B + k * ldb + jj), c0);
          }
          if (acc) c0 = _mm256_add_ps(_mm256_loadu_ps(c + jj), c0);
          _mm256_storeu_ps(c + jj, c0);
        }
        if (jj < j + w) {
          const __m256i m = tail_mask(j + w - jj);
          __m256 c0 = _mm256_setzero_ps();
          for (int64_t k = 0; k < K; ++k) {
            const __m256 av = _mm256_set1_ps(ta ? A[k * lda + i] : A[i * lda + k]);
            c0 = _mm256_fmadd_ps(av, _mm256_maskload_ps(B + k * ldb + jj, m), c0);
          }
          if (acc) c0 = _mm256_add_ps(_mm256_maskload_ps(c + jj, m), c0);
          _mm256_maskstore_ps(c + jj, m, c0);
        }
      }
    }
  }
}
}  // namespace

// In-register 8x8 transpose: r[i] becomes column i of the input rows.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Pack a 16-column panel of op(B) = B^T (B row-major, rows j0..j0+nr, columns p0..p0+kc, nr <=
// 16) into k-major order: dst[k*16 + j] = B[(j0+j)*ldb + p0+k], and 0 for j >= nr (the missing
// rows transpose as zero vectors: a 10-class output layer's panel takes the same 8 x 8
// transposes as a full one).
void pack_b_trans_f32(float* dst, const float* B, int64_t ldb, int64_t p0, int64_t kc, int64_t j0, int64_t nr) {
  const int64_t k8 = kc / 8 * 8;
  for (int h = 0; h < 2; ++h) {
    const int live = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(8, nr - 8 * h)));  // rows present
    const float* src = B + (j0 + 8 * h) * ldb + p0;
    for (int64_t k = 0; k < k8; k += 8) {
      __m256 r[8];
      for (int q = 0; q < 8; ++q) r[q] = q < live ? _mm256_loadu_ps(src + q * ldb + k) : _mm256_setzero_ps();
      transpose8(r);
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(dst + (k + q) * 16 + 8 * h, r[q]);
    }
    for (int64_t k = k8; k < kc; ++k)
      for (int q = 0; q < 8; ++q) dst[k * 16 + 8 * h + q] = q < live ? src[q * ldb + k] : 0.0f;
  }
}

// c[j * ldc + r] (+)= t[r * 16 + j], r < 6, j < 16: a full tile of C^T stored into C (the
// swapped x @ W^T). Two 8x8 transposes; each of the 16 rows of C gets 6 contiguous floats.
void store_tile_t_f32(float* c, int64_t ldc, const float* t, bool acc) {
  for (int h = 0; h < 2; ++h) {
    __m256 r[8];
    for (int q = 0; q < 6; ++q) r[q] = _mm256_loadu_ps(t + q * 16 + 8 * h);
    r[6] = r[7] = _mm256_setzero_ps();
    transpose8(r);  // r[j]: column 8h + j of the tile, its 6 values in lanes 0..5
    for (int j = 0; j < 8; ++j) {
      float* cj = c + (8 * h + j) * ldc;
      __m128 lo = _mm256_castps256_ps128(r[j]);
      __m128 hi = _mm256_extractf128_ps(r[j], 1);
      if (acc) {
        lo = _mm_add_ps(_mm_loadu_ps(cj), lo);
        hi = _mm_add_ps(_mm_loadl_pi(_mm_setzero_ps(), reinterpret_cast<const __m64*>(cj + 4)), hi);
      }
      _mm_storeu_ps(cj, lo);
      _mm_storel_pi(reinterpret_cast<__m64*>(cj + 4), hi);
    }
  }
}

// Pack a 6-row micro-panel of A (row-major, rows i0..i0+6, columns p0..p0+kc) into k-major
// order: dst[k*6 + r] = A[(i0+r)*lda + p0+k]. Each 8-float store leaves 2 lanes of junk that
// the next store overwrites; the caller's buffer has 8 floats of slack after the panel.
void pack_a_rows_f32(float* dst, const float* A, int64_t lda, int64_t i0, int64_t p0, int64_t kc) {
  const float* src = A + i0 * lda + p0;
  const int64_t k8 = kc / 8 * 8;
  for (int64_t k = 0; k < k8; k += 8) {
    __m256 r[8];
    for (int q = 0; q < 6; ++q) r[q] = _mm256_loadu_ps(src + q * lda + k);
    r[6] = r[7] = _mm256_setzero_ps();
    transpose8(r);
    for (int q = 0; q < 8; ++q) _mm256_storeu_ps(dst + (k + q) * 6, r[q]);
  }
  for (int64_t k = k8; k < kc; ++k)
    for (int r = 0; r < 6; ++r) dst[k * 6 + r] = src[r * lda + k];
}

void small_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float* C, int64_t ldc, bool acc) {
  if (!ta && tb) dots_f32(M, N, K, A, lda, B, ldb, C, ldc, acc);
  else if (!tb) rows_f32(ta, M, N, K, A, lda, B, ldb, C, ldc, acc);
  else gemm_small<float>(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, acc);
}
void small_f64(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const double* A, int64_t lda,
               const double* B, int64_t ldb, double* C, int64_t ldc, bool acc) {
  gemm_small<double>(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, acc);
}

}  // namespace lp::kern::avx2
