// Activation functors and the one element-wise template that applies them.
// Each functor: f(x) forward; df(x, y) derivative given input x and output y = f(x).
// A new activation is one functor plus one line in dispatch_act.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "layerprop/common.hpp"
#include "layerprop/runtime.hpp"

namespace lp::kern {

template <class T>
struct IdentityF {
  T s;
  T f(T x) const { return x; }
  T df(T, T) const { return T(1); }
};
template <class T>
struct ReluF {
  T s;
  T f(T x) const { return x > T(0) ? x : T(0); }
  T df(T x, T) const { return x > T(0) ? T(1) : T(0); }
};
template <class T>
struct LeakyReluF {
  T s;  // negative slope
  T f(T x) const { return x > T(0) ? x : x * s; }
  T df(T x, T) const { return x > T(0) ? T(1) : s; }
};
template <class T>
struct TanhF {
  T s;
  T f(T x) const { return std::tanh(x); }
  T df(T, T y) const { return T(1) - y * y; }
};
template <class T>
struct SigmoidF {
  T s;
  T f(T x) const { return T(1) / (T(1) + std::exp(-x)); }
  T df(T, T y) const { return y * (T(1) - y); }
};
template <class T>
struct GeluF {  // exact form: x * Phi(x)
  T s;
  T f(T x) const { return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440))); }
  T df(T x, T) const {
    T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
    T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  }
};

// Calls fn(functor) with the functor for `act`; slope is used by LeakyReLU only.
template <class T, class Fn>
decltype(auto) dispatch_act(Act act, T slope, Fn&& fn) {
  switch (act) {
    case Act::ReLU: return fn(ReluF<T>{slope});
    case Act::LeakyReLU: return fn(LeakyReluF<T>{slope});
    case Act::Tanh: return fn(TanhF<T>{slope});
    case Act::Sigmoid: return fn(SigmoidF<T>{slope});
    case Act::GELU: return fn(GeluF<T>{slope});
    case Act::Identity: default: return fn(IdentityF<T>{slope});
  }
}

inline bool act_is_cheap(Act a) { return a == Act::Identity || a == Act::ReLU || a == Act::LeakyReLU; }

// y[i] = f(x[i]) for n elements (y and x do not overlap).
template <class T>
void act_forward(T* __restrict y, const T* __restrict x, int64_t n, Act act, T slope) {
  const int64_t thresh = act_is_cheap(act) ? (1 << 18) : (1 << 14);
  dispatch_act<T>(act, slope, [&](auto F) {
    parallel_range(n, n, thresh, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) y[i] = F.f(x[i]);
    });
    return 0;
  });
}

// dx[i] = dy[i] * f'(x[i], y[i]); accumulate adds into dx instead. No argument overlaps dx.
template <class T>
void act_backward(T* __restrict dx, const T* __restrict dy, const T* __restrict x,
                  const T* __restrict y, int64_t n, Act act, T slope, bool accumulate) {
  const int64_t thresh = act_is_cheap(act) ? (1 << 18) : (1 << 14);
  dispatch_act<T>(act, slope, [&](auto F) {
    parallel_range(n, n, thresh, [&](int64_t b, int64_t e) {
      if (accumulate)
        for (int64_t i = b; i < e; ++i) dx[i] += dy[i] * F.df(x[i], y[i]);
      else
        for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * F.df(x[i], y[i]);
    });
    return 0;
  });
}

// y = a + b (or y += a when accumulating into y): used by add nodes and gradient fan-in.
template <class T>
void add_into(T* __restrict y, const T* __restrict a, int64_t n, bool accumulate) {
  parallel_range(n, n, 1 << 18, [&](int64_t b, int64_t e) {
    if (accumulate)
      for (int64_t i = b; i < e; ++i) y[i] += a[i];
    else
      for (int64_t i = b; i < e; ++i) y[i] = a[i];
  });
}

// y = a * m (or y += a * m): gradient through a fixed mask.
template <class T>
void mul_into(T* __restrict y, const T* __restrict a, const T* __restrict m, int64_t n, bool accumulate) {
  parallel_range(n, n, 1 << 18, [&](int64_t b, int64_t e) {
    if (accumulate)
      for (int64_t i = b; i < e; ++i) y[i] += a[i] * m[i];
    else
      for (int64_t i = b; i < e; ++i) y[i] = a[i] * m[i];
  });
}

}  // namespace lp::kern

namespace lp::kern {
// db (C) (+)= column sums of dz (N,C), rows summed in order: bias gradient.
template <class T>
void colsum(T* __restrict db, const T* __restrict dz, int64_t N, int64_t C, bool accumulate) {
  parallel_range(C, N * C, int64_t(1) << 18, [&](int64_t j0, int64_t j1) {
    if (!accumulate)
      for (int64_t j = j0; j < j1; ++j) db[j] = T(0);
    for (int64_t i = 0; i < N; ++i) {
      const T* row = dz + i * C;
      for (int64_t j = j0; j < j1; ++j) db[j] += row[j];
    }
  });
}
}  // namespace lp::kern
