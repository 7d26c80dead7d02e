// Normalization kernels, forward and backward side by side, PyTorch's conventions.
// Column statistics (BatchNorm) are split across threads by column ranges and sum rows in
// order; row statistics (LayerNorm) by row ranges: results never depend on the thread count.
#pragma once
#include <cmath>
#include <cstdint>

#include "layerprop/runtime.hpp"

namespace lp::kern {

// x (N,C) -> y (N,C) with batch statistics; mean, invstd (C) saved for backward.
// gamma/beta may be null (affine=False). Running statistics updated when rm/rv are non-null:
// r = (1-momentum) r + momentum * stat, with the unbiased variance for rv.
template <class T>
void batchnorm_forward_train(T* y, T* mean, T* invstd, const T* x, const T* gamma, const T* beta,
                             int64_t N, int64_t C, double eps, T* rm, T* rv, double momentum) {
  parallel_range(C, Work::EltCostly, N * C / 4, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) mean[j] = invstd[j] = T(0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = j0; j < j1; ++j) mean[j] += x[n * C + j];
    for (int64_t j = j0; j < j1; ++j) mean[j] /= T(N);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = j0; j < j1; ++j) {
        const T d = x[n * C + j] - mean[j];
        invstd[j] += d * d;  // sum of squares for now
      }
    for (int64_t j = j0; j < j1; ++j) {
      const T var = invstd[j] / T(N);
      if (rm) {
        rm[j] = T(1 - momentum) * rm[j] + T(momentum) * mean[j];
        rv[j] = T(1 - momentum) * rv[j] + T(momentum) * (invstd[j] / T(N - 1));
      }
      invstd[j] = T(1) / std::sqrt(var + T(eps));
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = j0; j < j1; ++j) {
        const T xh = (x[n * C + j] - mean[j]) * invstd[j];
        y[n * C + j] = gamma ? xh * gamma[j] + beta[j] : xh;
      }
  });
}

// Inference: running statistics; invstd (C) receives 1/sqrt(rv+eps) for backward.
template <class T>
void batchnorm_forward_eval(T* y, T* mean, T* invstd, const T* x, const T* gamma, const T* beta,
                            int64_t N, int64_t C, double eps, const T* rm, const T* rv) {
  for (int64_t j = 0; j < C; ++j) {
    mean[j] = rm[j];
    invstd[j] = T(1) / std::sqrt(rv[j] + T(eps));
  }
  parallel_range(N, Work::EltCostly, N * C / 4, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < C; ++j) {
        const T xh = (x[n * C + j] - mean[j]) * invstd[j];
        y[n * C + j] = gamma ? xh * gamma[j] + beta[j] : xh;
      }
  });
}

// dx (N,C) (+)= from dy; dgamma/dbeta (C) (+)= when non-null. batch_stats: the forward used
// batch statistics (their gradient terms enter dx); otherwise mean/invstd are constants.
template <class T>
void batchnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* invstd, const T* gamma, int64_t N, int64_t C, bool batch_stats,
                        bool acc_dx, bool acc_params) {
  parallel_range(C, Work::EltCostly, N * C / 4, [&](int64_t j0, int64_t j1) {
    constexpr int64_t W = 64;
    T sdy[W], sdyx[W];
    for (int64_t b0 = j0; b0 < j1; b0 += W) {
      const int64_t b1 = std::min(j1, b0 + W);
      for (int64_t j = b0; j < b1; ++j) sdy[j - b0] = sdyx[j - b0] = T(0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = b0; j < b1; ++j) {
          const T g = dy[n * C + j];
          sdy[j - b0] += g;
          sdyx[j - b0] += g * (x[n * C + j] - mean[j]) * invstd[j];
        }
      for (int64_t j = b0; j < b1; ++j) {
        if (dgamma) dgamma[j] = acc_params ? dgamma[j] + sdyx[j - b0] : sdyx[j - b0];
        if (dbeta) dbeta[j] = acc_params ? dbeta[j] + sdy[j - b0] : sdy[j - b0];
      }
      if (!dx) continue;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = b0; j < b1; ++j) {
          const T scale = (gamma ? gamma[j] : T(1)) * invstd[j];
          T v;
          if (batch_stats) {
            const T xh = (x[n * C + j] - mean[j]) * invstd[j];
            v = (dy[n * C + j] - sdy[j - b0] / T(N) - xh * (sdyx[j - b0] / T(N))) * scale;
          } else {
            v = dy[n * C + j] * scale;
          }
          dx[n * C + j] = acc_dx ? dx[n * C + j] + v : v;
        }
    }
  });
}

// x (N,C) -> y (N,C) normalized per row; mean, invstd (N) saved for backward.
template <class T>
void layernorm_forward(T* y, T* mean, T* invstd, const T* x, const T* gamma, const T* beta,
                       int64_t N, int64_t C, double eps) {
  parallel_range(N, Work::EltCostly, N * C / 4, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* r = x + n * C;
      T s = 0;
      for (int64_t j = 0; j < C; ++j) s += r[j];
      const T mu = s / T(C);
      T ss = 0;
      for (int64_t j = 0; j < C; ++j) ss += (r[j] - mu) * (r[j] - mu);
      const T is = T(1) / std::sqrt(ss / T(C) + T(eps));
      mean[n] = mu;
      invstd[n] = is;
      for (int64_t j = 0; j < C; ++j) y[n * C + j] = (r[j] - mu) * is * gamma[j] + beta[j];
    }
  });
}

template <class T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* invstd, const T* gamma, int64_t N, int64_t C, bool acc_dx,
                        bool acc_params) {
  if (dx)
    parallel_range(N, Work::EltCostly, N * C / 4, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const T* r = x + n * C;
        const T* g = dy + n * C;
        T a = 0, b = 0;
        for (int64_t j = 0; j < C; ++j) {
          const T gh = g[j] * gamma[j];
          a += gh;
          b += gh * (r[j] - mean[n]) * invstd[n];
        }
        a /= T(C);
        b /= T(C);
        for (int64_t j = 0; j < C; ++j) {
          const T xh = (r[j] - mean[n]) * invstd[n];
          const T v = (g[j] * gamma[j] - a - xh * b) * invstd[n];
          dx[n * C + j] = acc_dx ? dx[n * C + j] + v : v;
        }
      }
    });
  if (dgamma)
    parallel_range(C, Work::EltCostly, N * C / 4, [&](int64_t j0, int64_t j1) {
      if (!acc_params)
        for (int64_t j = j0; j < j1; ++j) dgamma[j] = dbeta[j] = T(0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = j0; j < j1; ++j) {
          const T g = dy[n * C + j];
          dgamma[j] += g * (x[n * C + j] - mean[n]) * invstd[n];
          dbeta[j] += g;
        }
    });
}

}  // namespace lp::kern
