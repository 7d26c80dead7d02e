#include "layerprop/loss.hpp"

#include <algorithm>
#include <cmath>
#include <vector>
#include <cstdint>
#include <cstring>

#include "layerprop/eltwise.hpp"
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

#include "exp_nonpos.hpp"

template <class T>
double cross_entropy(T* grad, T* row_loss, const T* logits, const int64_t* labels, const T* w,
                     int64_t N, int64_t C) {
  const T inv_n = T(1) / static_cast<T>(N);
  const double W = weight_total(w, N);
  parallel_range(N, Work::Loss, N * C * 8, [&](int64_t lo, int64_t hi) {
    // Blocks of rows: each row's max, then z - max for the whole block into the gradient (or
    // scratch), one vector pass of exponentials over it (exp_nonpos_inplace), and each row's
    // sum in column order, the rows of a block side by side so their additions overlap.
    constexpr int64_t RB = 64;
    static thread_local std::vector<T> scratch;
    T m[RB], s[RB];
    for (int64_t b0 = lo; b0 < hi; b0 += RB) {
      const int64_t nb = std::min(RB, hi - b0);
      T* e;
      if (grad) {  // each exponential once: kept in the gradient row until it is scaled
        e = grad + b0 * C;
      } else {
        if (static_cast<int64_t>(scratch.size()) < nb * C) scratch.resize(static_cast<size_t>(RB * C));
        e = scratch.data();
      }
      for (int64_t r = 0; r < nb; ++r) {
        const T* z = logits + (b0 + r) * C;
        T mx = z[0];
        for (int64_t j = 1; j < C; ++j) mx = std::max(mx, z[j]);
        m[r] = mx;
        T* er = e + r * C;
        for (int64_t j = 0; j < C; ++j) er[j] = z[j] - mx;
        s[r] = 0;
      }
      exp_nonpos_inplace<T>(e, nb * C);
      for (int64_t j = 0; j < C; ++j)
        for (int64_t r = 0; r < nb; ++r) s[r] += e[r * C + j];
      for (int64_t r = 0; r < nb; ++r) {
        const int64_t i = b0 + r;
        const T* z = logits + i * C;
        const T lse = m[r] + std::log(s[r]);
        row_loss[i] = w ? (lse - z[labels[i]]) * w[i] : lse - z[labels[i]];
        if (grad) {
          T* g = grad + i * C;
          const T f = w ? static_cast<T>(static_cast<double>(w[i]) / W) : inv_n;
          const T inv_s = T(1) / s[r];
          for (int64_t j = 0; j < C; ++j) g[j] = g[j] * inv_s * f;
          g[labels[i]] -= f;
        }
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
