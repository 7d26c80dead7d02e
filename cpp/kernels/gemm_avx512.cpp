// AVX-512F GEMM micro-kernels, compiled with -mavx512f -mfma and called only when the CPU has
// AVX-512F (lp::use_avx512). They compute 12 x 16 tiles: two of the AVX2 kernel's 6-row
// micro-panels at once, one zmm accumulator per row. Each output is the same fma chain over k,
// in the same order, from a zero start, added to C once per depth block: the AVX2 kernel's
// bits exactly. What changes is the cost per k: one 16-float load of B and twelve fmas that
// take their A value as an embedded broadcast, against the AVX2 tile's two loads, six
// broadcasts and twelve fmas for half the work. The B micro-panel stays the same kc x 16.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace lp::kern::avx512 {

namespace {
// What a tile stores after its last depth block: C = C (+) acc, then, when fused, C += bias
// and act_out = f(C) for Identity (act 0), ReLU (1) or LeakyReLU (2): the values bias_act
// computes in a second pass over C, here taken from the registers.
struct TileOut {
  const float* bias = nullptr;  // this column block's bias, or null
  int act = -1;                 // -1: no epilogue here
  float slope = 0;
  float* act_out = nullptr;     // this tile's first act_out row, or null
  int64_t ld_act = 0;
  float* colsum = nullptr;      // TA only: colsum[r] (+)= sum over k of A(r, k), or null
  bool colsum_acc = false;
};

// The R rows of a tile's accumulators into C (the columns in `mask`), with `out`'s epilogue.
template <int R>
[[gnu::always_inline]] inline void store_rows(const __m512 (&acc)[R], float* __restrict c, int64_t ldc, bool accumulate,
                                              __mmask16 mask, const TileOut& out) {
  if (out.act < 0 && mask == __mmask16(0xFFFF)) {
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      float* cr = c + r * ldc;
      _mm512_storeu_ps(cr, accumulate ? _mm512_add_ps(_mm512_loadu_ps(cr), acc[r]) : acc[r]);
    }
    return;
  }
  const __m512 zero = _mm512_setzero_ps();
  const __m512 bias = out.bias ? _mm512_maskz_loadu_ps(mask, out.bias) : zero;
  const __m512 slope = _mm512_set1_ps(out.slope);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    __m512 v = accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cr), acc[r]) : acc[r];
    if (out.act >= 0 && out.bias) v = _mm512_add_ps(v, bias);
    _mm512_mask_storeu_ps(cr, mask, v);
    if (out.act >= 0 && out.act_out) {
      __m512 f = v;
      if (out.act == 1) f = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);  // x < 0 ? 0 : x
      else if (out.act == 2) f = _mm512_mask_mov_ps(_mm512_mul_ps(v, slope), _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), v);
      _mm512_mask_storeu_ps(out.act_out + r * out.ld_act, mask, f);
    }
  }
}

// An R x 16 tile (R <= 12): zero accumulators, for each k one 16-float load of B and the R fmas
// `rows(k, bv, acc)` (each reading its A value where that kernel keeps it), then R rows stored
// (with `out`'s epilogue, if any).
template <int R, class Rows>
[[gnu::always_inline]] inline void tile_r16(int64_t kc, const float* __restrict b, float* __restrict c, int64_t ldc,
                                            bool accumulate, Rows rows, const TileOut& out = TileOut()) {
  __m512 acc[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    rows(k, _mm512_loadu_ps(b), acc);
    b += 16;
  }
  store_rows<R>(acc, c, ldc, accumulate, __mmask16(0xFFFF), out);
}

// R rows of two consecutive packed 6-row micro-panels: row r's k-th value is a[k * 6 + r] for
// r < 6, a[6 * kc + k * 6 + r - 6] after (the second panel is read only when R > 6).
template <int R>
void panels_r16(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t ldc,
                bool accumulate, const TileOut& out = TileOut()) {
  const float* a1 = a + 6 * kc;
  tile_r16<R>(
      kc, b, c, ldc, accumulate,
      [&](int64_t k, __m512 bv, __m512 (&acc)[R]) {
        const float* p0 = a + k * 6;
        const float* p1 = a1 + k * 6;
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r)
          acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(r < 6 ? p0[r] : p1[r - 6]), bv, acc[r]);
      },
      out);
}

TileOut fused(const float* bias, int act, float slope, float* act_out, int64_t ld_act) {
  TileOut out;
  out.bias = bias;
  out.act = act;
  out.slope = slope;
  out.act_out = act_out;
  out.ld_act = ld_act;
  return out;
}
}  // namespace

// c (12 x 16) (+)= two consecutive packed 6-row micro-panels (a, a + 6 * kc) . b_panel
// (kc x 16): row r's k-th value is a[k * 6 + r] for r < 6, a[6 * kc + k * 6 + r - 6] after.
void ukernel2_f32(int64_t kc, const float* __restrict a, const float* __restrict b,
                  float* __restrict c, int64_t ldc, bool accumulate) {
  panels_r16<12>(kc, a, b, c, ldc, accumulate);
}

// The last rows of a row block (1 to 11 of them, `rows`), same layout: only those rows are
// computed and stored. Each output is the same fma chain as in the full tiles, so the bits do
// not depend on where a row falls; the AVX2 kernel would compute 6-row tiles on zero padding.
// The epilogue is fused into the stores (act -1: none; else as TileOut); ukernel_tail_f32
// below is this without one.
void ukernel_tail_ep_f32(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                         int64_t ldc, bool accumulate, int rows, const float* bias, int act, float slope,
                         float* act_out, int64_t ld_act) {
  const TileOut out = fused(bias, act, slope, act_out, ld_act);
  switch (rows) {
#define LP_TAIL_CASE(R) \
  case R: return panels_r16<R>(kc, a, b, c, ldc, accumulate, out);
    LP_TAIL_CASE(1) LP_TAIL_CASE(2) LP_TAIL_CASE(3) LP_TAIL_CASE(4) LP_TAIL_CASE(5) LP_TAIL_CASE(6)
    LP_TAIL_CASE(7) LP_TAIL_CASE(8) LP_TAIL_CASE(9) LP_TAIL_CASE(10) LP_TAIL_CASE(11)
#undef LP_TAIL_CASE
    default: return panels_r16<12>(kc, a, b, c, ldc, accumulate, out);
  }
}

void ukernel_tail_f32(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                      int64_t ldc, bool accumulate, int rows) {
  ukernel_tail_ep_f32(kc, a, b, c, ldc, accumulate, rows, nullptr, -1, 0.0f, nullptr, 0);
}

// The same tile with A read in place: row r of the 12 x kc block starts at a + r * lda (four
// base pointers, three rows each, so the addresses stay base + {0, 1, 2} * lda).
namespace {
void rows_tile(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, float* __restrict c,
               int64_t ldc, bool accumulate, const TileOut& out) {
  const float* base[4] = {a, a + 3 * lda, a + 6 * lda, a + 9 * lda};
  tile_r16<12>(
      kc, b, c, ldc, accumulate,
      [&](int64_t k, __m512 bv, __m512 (&acc)[12]) {
#pragma GCC unroll 4
        for (int g = 0; g < 4; ++g) {
          const float* q = base[g] + k;
          acc[3 * g] = _mm512_fmadd_ps(_mm512_set1_ps(q[0]), bv, acc[3 * g]);
          acc[3 * g + 1] = _mm512_fmadd_ps(_mm512_set1_ps(q[lda]), bv, acc[3 * g + 1]);
          acc[3 * g + 2] = _mm512_fmadd_ps(_mm512_set1_ps(q[2 * lda]), bv, acc[3 * g + 2]);
        }
      },
      out);
}
}  // namespace

void ukernel2_rows_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                       float* __restrict c, int64_t ldc, bool accumulate) {
  rows_tile(kc, a, lda, b, c, ldc, accumulate, TileOut());
}

// The same, with the epilogue fused into the stores (act -1: none; else as TileOut).
void ukernel2_rows_ep_f32(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                          float* __restrict c, int64_t ldc, bool accumulate, const float* bias, int act, float slope,
                          float* act_out, int64_t ld_act) {
  rows_tile(kc, a, lda, b, c, ldc, accumulate, fused(bias, act, slope, act_out, ld_act));
}

namespace {

// An R x 16 tile of a small product read in place (gemm_inplace_f32): row k of B at b + k * ldb,
// and A transposed (TA: A(r, k) = a[k * lda + r], a weight gradient's dz^T) or not (a[r * lda
// + k], an input gradient's dz or a forward's x). Each output is the same fma chain over k as in
// the packed kernels, so the same bits; `mask` keeps the columns of a last, narrower block.
template <int R, bool TA>
void inplace_r16(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b, int64_t ldb,
                 float* __restrict c, int64_t ldc, bool accumulate, __mmask16 mask, const TileOut& out) {
  __m512 acc[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  if constexpr (TA) {
    if (out.colsum) {  // also the tile's rows of A summed over k, in order: a bias gradient
      const __mmask16 rows = static_cast<__mmask16>((1u << R) - 1);
      __m512 cs = out.colsum_acc ? _mm512_maskz_loadu_ps(rows, out.colsum) : _mm512_setzero_ps();
      for (int64_t k = 0; k < kc; ++k) {
        const __m512 bv = _mm512_maskz_loadu_ps(mask, b + k * ldb);
        const float* p = a + k * lda;
        cs = _mm512_add_ps(cs, _mm512_maskz_loadu_ps(rows, p));
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[r]), bv, acc[r]);
      }
      _mm512_mask_storeu_ps(out.colsum, rows, cs);
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const __m512 bv = _mm512_maskz_loadu_ps(mask, b + k * ldb);
        const float* p = a + k * lda;
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[r]), bv, acc[r]);
      }
    }
  } else {
    // Rows in groups of three from four base pointers, so every address is a base plus lda
    // times 0, 1 or 2 (one index register): twelve row pointers would not fit in registers.
    const float* base[4] = {a, a + 3 * lda, a + 6 * lda, a + 9 * lda};
    for (int64_t k = 0; k < kc; ++k) {
      const __m512 bv = _mm512_maskz_loadu_ps(mask, b + k * ldb);
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const float* q = base[r / 3] + k;
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[(r % 3) * lda]), bv, acc[r]);
      }
    }
  }
  store_rows<R>(acc, c, ldc, accumulate, mask, out);
}

template <bool TA>
void inplace_rows(int rows, int64_t kc, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc, bool accumulate, __mmask16 mask, const TileOut& out) {
  switch (rows) {
#define LP_INPLACE_CASE(R) \
  case R: return inplace_r16<R, TA>(kc, a, lda, b, ldb, c, ldc, accumulate, mask, out);
    LP_INPLACE_CASE(1) LP_INPLACE_CASE(2) LP_INPLACE_CASE(3) LP_INPLACE_CASE(4) LP_INPLACE_CASE(5)
    LP_INPLACE_CASE(6) LP_INPLACE_CASE(7) LP_INPLACE_CASE(8) LP_INPLACE_CASE(9) LP_INPLACE_CASE(10)
    LP_INPLACE_CASE(11)
#undef LP_INPLACE_CASE
    default: return inplace_r16<12, TA>(kc, a, lda, b, ldb, c, ldc, accumulate, mask, out);
  }
}
}  // namespace

// C (M x N) (+)= op(A) (M x K) . B (K x N) for products small enough that their operands stay
// in L1: A is read where it is, and so is B's row k of column block j (16 columns), at
// B + (j / 16) * bstep + k * ldb: B itself (bstep 16) or its packed panels (ldb 16, bstep 16 K).
// Depth blocks of kcb (the packed path's), each added to C in turn, so every output gets the
// packed path's bits. Column blocks of 16 outside, 12-row tiles inside: a B block is read from
// L1 by every row tile. act >= 0 fuses the epilogue (bias, then Identity, ReLU or LeakyReLU
// into act_out) into the last depth block's stores.
// With ta, `colsum` (or null) also gets, for each row i of op(A), the sum over k of A^T(i, k),
// added to it when colsum_acc: computed by the first column block's tiles (one depth block).
void gemm_inplace_f32(bool ta, int64_t M, int64_t N, int64_t K, int64_t kcb, const float* A, int64_t lda,
                      const float* B, int64_t ldb, int64_t bstep, float* C, int64_t ldc, bool accumulate,
                      const float* bias, int act, float slope, float* act_out, int64_t ld_act, float* colsum,
                      bool colsum_acc) {
  for (int64_t pc = 0; pc < K; pc += kcb) {
    const int64_t kc = std::min(kcb, K - pc);
    const bool acc = accumulate || pc > 0;
    const bool last = pc + kc >= K;
    const float* bp = B + pc * ldb;
    const float* ap = ta ? A + pc * lda : A + pc;
    for (int64_t j = 0; j < N; j += 16) {
      const __mmask16 mask = N - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (N - j)) - 1);
      const float* bj = bp + (j / 16) * bstep;
      for (int64_t i = 0; i < M; i += 12) {
        const int rows = static_cast<int>(std::min<int64_t>(12, M - i));
        TileOut out = last && act >= 0 ? fused(bias ? bias + j : nullptr, act, slope,
                                               act_out ? act_out + i * ld_act + j : nullptr, ld_act)
                                         : TileOut();
        if (ta && colsum && j == 0 && kc == K) {
          out.colsum = colsum + i;
          out.colsum_acc = colsum_acc;
        }
        if (ta) inplace_rows<true>(rows, kc, ap + i, lda, bj, ldb, C + i * ldc + j, ldc, acc, mask, out);
        else inplace_rows<false>(rows, kc, ap + i * lda, lda, bj, ldb, C + i * ldc + j, ldc, acc, mask, out);
      }
    }
  }
}

}  // namespace lp::kern::avx512
