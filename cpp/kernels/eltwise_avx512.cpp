// The element-wise scans built with AVX-512F (called only when the CPU has it).
#include <immintrin.h>

#include <cstdint>

namespace lp::kern::avx512 {

// True when none of the n floats is NaN or +-Inf: the exponent bits of 64 values a step, four
// independent compares OR-ed into one mask (the training guard reads every gradient before a
// step is applied). An integer test: the same answer as the other builds' finite_range.
bool finite_f32(const float* p, int64_t n) {
  const __m512i ex = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i a = _mm512_and_si512(_mm512_loadu_si512(p + i), ex);
    const __m512i b = _mm512_and_si512(_mm512_loadu_si512(p + i + 16), ex);
    const __m512i c = _mm512_and_si512(_mm512_loadu_si512(p + i + 32), ex);
    const __m512i d = _mm512_and_si512(_mm512_loadu_si512(p + i + 48), ex);
    bad |= static_cast<__mmask16>(_mm512_cmpeq_epi32_mask(a, ex) | _mm512_cmpeq_epi32_mask(b, ex) |
                                  _mm512_cmpeq_epi32_mask(c, ex) | _mm512_cmpeq_epi32_mask(d, ex));
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512i a = _mm512_and_si512(_mm512_maskz_loadu_epi32(m, p + i), ex);
    bad |= _mm512_mask_cmpeq_epi32_mask(m, a, ex);
  }
  return bad == 0;
}

}  // namespace lp::kern::avx512
