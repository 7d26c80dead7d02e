#include "layerprop/loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "layerprop/runtime.hpp"

namespace lp::kern {

namespace {
double sum_rows(const double* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += v[i];
  return s;
}
template <class T>
double sum_rows(const T* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(v[i]);
  return s;
}
}  // namespace

// Sum of the row weights in double, in row order (null: N).
template <class T>
double weight_total(const T* w, int64_t N) {
  return w ? sum_rows(w, N) : static_cast<double>(N);
}

// exp(d) for d = z - max(z) <= 0 (or NaN), float: Cody-Waite reduction d = n ln 2 + r with a
// two-part ln 2 (n * the high part is exact), e^r as 1 + r + r^2 P(r) with a degree-5 P
// (Cephes' coefficients), and 2^n applied as two normal halves so subnormal results come out of
// one rounding. Plain adds and multiplies (no contraction, no calls, no branches), so the
// softmax loops vectorize, and a vector lane and the scalar tail give the same bits. Checked against the correctly
// rounded exponential on every float in [-104, 0]: at most 0.98 ulp (glibc's expf, a call per
// element, was 40% of the cross-entropy's time in a digits epoch). Below -104 the result is 0, as the exponential
// rounds to +0 there; NaN stays NaN.
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

template <class T>
double cross_entropy(T* grad, T* row_loss, const T* logits, const int64_t* labels, const T* w,
                     int64_t N, int64_t C) {
  const T inv_n = T(1) / static_cast<T>(N);
  const double W = weight_total(w, N);
  parallel_range(N, Work::Loss, N * C * 8, [&](int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const T* z = logits + i * C;
    T m = z[0];
    for (int64_t j = 1; j < C; ++j) m = std::max(m, z[j]);
    T s = 0;
    T* g = grad ? grad + i * C : nullptr;
    if (g) {  // each exponential once: kept in the gradient row until it is scaled
      for (int64_t j = 0; j < C; ++j) g[j] = exp_nonpos(z[j] - m);  // vectorizes
      for (int64_t j = 0; j < C; ++j) s += g[j];                    // in column order
    } else {
      for (int64_t j = 0; j < C; ++j) s += exp_nonpos(z[j] - m);
    }
    const T lse = m + std::log(s);
    row_loss[i] = w ? (lse - z[labels[i]]) * w[i] : lse - z[labels[i]];
    if (g) {
      const T f = w ? static_cast<T>(static_cast<double>(w[i]) / W) : inv_n;
      const T inv_s = T(1) / s;
      for (int64_t j = 0; j < C; ++j) g[j] = g[j] * inv_s * f;
      g[labels[i]] -= f;
    }
  }
  });
  return sum_rows(row_loss, N) / W;
}

// The element-wise losses: the (row-weighted) mean over all N*D elements of F::loss(z, t), and
// its gradient k * F::grad(z, t) / (N * D) (k * w_i / (sum(w) * D) with weights). `cost`: work
// per element, for the threading threshold.
template <class T, class F>
double elementwise_loss(T* grad, T* row_loss, const T* z, const T* target, const T* w, int64_t N,
                        int64_t D, double k, int64_t cost, F f) {
  const T scale0 = T(k) / static_cast<T>(N * D);
  const double W = weight_total(w, N);
  parallel_range(N, Work::Loss, N * D * cost, [&](int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const T* x = z + i * D;
    const T* t = target + i * D;
    const T scale = w ? static_cast<T>(k * static_cast<double>(w[i]) / (W * static_cast<double>(D))) : scale0;
    T s = 0;
    for (int64_t j = 0; j < D; ++j) {
      s += f.loss(x[j], t[j]);
      if (grad) grad[i * D + j] = f.grad(x[j], t[j]) * scale;
    }
    row_loss[i] = w ? s * w[i] : s;
  }
  });
  return sum_rows(row_loss, N) / (W * static_cast<double>(D));
}

template <class T>
struct SquaredError {  // (p - t)^2; gradient 2 (p - t)
  T loss(T p, T t) const { return (p - t) * (p - t); }
  T grad(T p, T t) const { return p - t; }
};
template <class T>
struct LogisticLoss {  // binary cross-entropy of sigmoid(x); gradient sigmoid(x) - t
  // (1-t) x + log(1 + exp(-|x|)) + max(-x, 0): stable for any x
  T loss(T x, T t) const { return (T(1) - t) * x + std::log1p(std::exp(-std::fabs(x))) + std::max(-x, T(0)); }
  T grad(T x, T t) const { return T(1) / (T(1) + std::exp(-x)) - t; }
};
template <class T>
struct PoissonLogLoss {  // exp(z) - t z; gradient exp(z) - t
  T loss(T z, T t) const { return std::exp(z) - t * z; }
  T grad(T z, T t) const { return std::exp(z) - t; }
};

template <class T>
double mse(T* grad, T* row_loss, const T* pred, const T* target, const T* w, int64_t N, int64_t D) {
  return elementwise_loss(grad, row_loss, pred, target, w, N, D, 2.0, 1, SquaredError<T>{});
}

template <class T>
double bce_with_logits(T* grad, T* row_loss, const T* logits, const T* target, const T* w, int64_t N,
                       int64_t D) {
  return elementwise_loss(grad, row_loss, logits, target, w, N, D, 1.0, 8, LogisticLoss<T>{});
}

template <class T>
double poisson_nll(T* grad, T* row_loss, const T* logits, const T* target, const T* w, int64_t N,
                   int64_t D) {
  return elementwise_loss(grad, row_loss, logits, target, w, N, D, 1.0, 8, PoissonLogLoss<T>{});
}

template <class T>
double count_correct(const T* logits, const int64_t* labels, const T* w, int64_t N, int64_t C) {
  double correct = 0;
  for (int64_t i = 0; i < N; ++i) {
    const T* z = logits + i * C;
    int64_t best = 0;
    bool nan = std::isnan(z[0]);
    for (int64_t j = 1; j < C; ++j) {
      nan |= std::isnan(z[j]);
      if (z[j] > z[best]) best = j;
    }
    if (!nan && best == labels[i]) correct += w ? static_cast<double>(w[i]) : 1.0;  // NaN logits: wrong
  }
  return correct;
}

template <class T>
void softmax_rows(T* out, const T* z, int64_t N, int64_t D) {
  for (int64_t r = 0; r < N; ++r) {
    const T* zr = z + r * D;
    T* o = out + r * D;
    const T m = *std::max_element(zr, zr + D);
    T sum = 0;
    for (int64_t c = 0; c < D; ++c) o[c] = exp_nonpos(zr[c] - m);
    for (int64_t c = 0; c < D; ++c) sum += o[c];
    for (int64_t c = 0; c < D; ++c) o[c] = o[c] / sum;
  }
}

#define LP_INST(T)                                                                              \
  template void softmax_rows<T>(T*, const T*, int64_t, int64_t);                                 \
  template double cross_entropy<T>(T*, T*, const T*, const int64_t*, const T*, int64_t, int64_t); \
  template double mse<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t);                \
  template double bce_with_logits<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t);    \
  template double poisson_nll<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t);        \
  template double count_correct<T>(const T*, const int64_t*, const T*, int64_t, int64_t);
LP_INST(float)
LP_INST(double)
#undef LP_INST

}  // namespace lp::kern
