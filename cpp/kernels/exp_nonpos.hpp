// exp(d) for d <= 0, included inside each kernel build's namespace (loss.cpp, eltwise_impl.hpp):
// an inline function compiled with different instruction sets in two files must not be one
// symbol. Needs <cmath>, <cstdint>, <cstring>, <type_traits>.
// exp(d) for d = z - max(z) <= 0 (or NaN), float: Cody-Waite reduction d = n ln 2 + r with a
// two-part ln 2 (n * the high part is exact), e^r as 1 + r + r^2 P(r) with a degree-5 P
// (Cephes' coefficients), and 2^n applied as two normal halves so subnormal results come out of
// one rounding. Plain adds and multiplies (no contraction, no calls, no branches), so loops
// over it vectorize, and a vector lane and a scalar tail, or any two builds, give the same
// bits. Checked against the correctly rounded exponential on every float in [-104, 0]: at most
// 0.98 ulp (glibc's expf, a call per element, was 40% of the cross-entropy's time in a digits
// epoch). Below -104 the result is 0, as the exponential rounds to +0 there; NaN stays NaN.
inline float exp_nonpos_f32(float d) {
  const float x = d < -104.0f ? -104.0f : d;                 // NaN passes through
  const float t = x * 1.44269504088896341f + 12582912.0f;    // 1.5 * 2^23 + round(x / ln 2)
  const float n = t - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.0f;
  uint32_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int32_t ni = static_cast<int32_t>(tb - 0x4B400000u);  // n, in [-150, 0] unless NaN
  const int32_t h = ni / 2, l = ni - h;
  const uint32_t bh = static_cast<uint32_t>(h + 127) << 23, bl = static_cast<uint32_t>(l + 127) << 23;
  float sh, sl;
  std::memcpy(&sh, &bh, sizeof sh);
  std::memcpy(&sl, &bl, sizeof sl);
  const float v = e * sl * sh;
  return d < -104.0f ? 0.0f : v;
}

// exp(d) for d <= 0: the float version above; double keeps libm, skipping its underflow path
// (errno, a raised flag) below -746, where the result is +0 either way.
template <class T>
inline T exp_nonpos(T d) {
  if constexpr (std::is_same_v<T, float>) return exp_nonpos_f32(d);
  else return d < T(-746) ? T(0) : std::exp(d);
}

