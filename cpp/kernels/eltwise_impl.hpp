// Element-wise loops, compiled twice: portable (eltwise.cpp) and AVX2 (eltwise_avx2.cpp), like
// the optimizer loops. Included inside a namespace; needs <algorithm>, <cmath>, <cstdint>, <cstring>,
// <type_traits> and layerprop/common.hpp before it. Pointers are __restrict and the activation is resolved before
// each loop, so every loop is one straight vectorizable pass. No FMA contraction in either
// build: an element's value is the same whichever build, thread or tail computes it.

// Activation functors: f(x) forward; df(x, y) derivative given input x and output y = f(x).
// A new activation is one functor plus one line in dispatch_act.
template <class T>
struct IdentityF {
  T s;
  T f(T x) const { return x; }
  T df(T, T) const { return T(1); }
};
template <class T>
struct ReluF {
  T s;
  // NaN passes through, as in PyTorch (a NaN weight must not turn into a finite output);
  // -0 stays -0. The derivative is 0 at NaN, as in PyTorch's threshold_backward.
  T f(T x) const { return x < T(0) ? T(0) : x; }
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
inline void dispatch_act(Act act, T slope, Fn&& fn) {
  switch (act) {
    case Act::ReLU: fn(ReluF<T>{slope}); return;
    case Act::LeakyReLU: fn(LeakyReluF<T>{slope}); return;
    case Act::Tanh: fn(TanhF<T>{slope}); return;
    case Act::Sigmoid: fn(SigmoidF<T>{slope}); return;
    case Act::GELU: fn(GeluF<T>{slope}); return;
    case Act::Identity: default: fn(IdentityF<T>{slope}); return;
  }
}

template <class T, class F>
inline void fwd_loop(const F& fn, T* __restrict y, const T* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fn.f(x[i]);
}

template <class T, class F>
inline void bwd_loop(const F& fn, T* __restrict dx, const T* __restrict dy, const T* __restrict x,
                     const T* __restrict y, int64_t n, bool acc) {
  if (acc)
    for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * fn.df(x[i], y[i]);
  else
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * fn.df(x[i], y[i]);
}

// y[i] = f(x[i]) for n elements.
template <class T>
void act_fwd_range(T* __restrict y, const T* __restrict x, int64_t n, Act act, T slope) {
  dispatch_act<T>(act, slope, [&](auto F) { fwd_loop(F, y, x, n); });
}

// dx[i] (+)= dy[i] * f'(x[i], y[i]).
template <class T>
void act_bwd_range(T* __restrict dx, const T* __restrict dy, const T* __restrict x,
                   const T* __restrict y, int64_t n, Act act, T slope, bool acc) {
  dispatch_act<T>(act, slope, [&](auto F) { bwd_loop(F, dx, dy, x, y, n, acc); });
}

// The final values of an (mr x nr) block of a product: C += bias (nr, or null); then, if
// act_out is set, act_out = f(C). C and act_out never overlap.
template <class T>
void bias_act_range(T* __restrict C, int64_t ldc, int64_t mr, int64_t nr, const T* __restrict bias,
                    Act act, T slope, T* __restrict act_out, int64_t ld_act) {
  dispatch_act<T>(act, slope, [&](auto F) {
    for (int64_t i = 0; i < mr; ++i) {
      T* __restrict c = C + i * ldc;
      if (bias)
        for (int64_t j = 0; j < nr; ++j) c[j] += bias[j];
      if (act_out) fwd_loop(F, act_out + i * ld_act, c, nr);
    }
  });
}

// db[j] (+)= sum over rows i, in order, of dz[i*ldz + j], for j < ncols.
template <class T>
void colsum_range(T* __restrict db, const T* __restrict dz, int64_t N, int64_t ldz, int64_t ncols,
                  bool acc) {
  if (!acc)
    for (int64_t j = 0; j < ncols; ++j) db[j] = T(0);
  for (int64_t i = 0; i < N; ++i) {
    const T* __restrict row = dz + i * ldz;
    for (int64_t j = 0; j < ncols; ++j) db[j] += row[j];
  }
}

// y (+)= a, or y (+)= a * m when m is set.
template <class T>
void add_range(T* __restrict y, const T* __restrict a, const T* __restrict m, int64_t n, bool acc) {
  if (m) {
    if (acc)
      for (int64_t i = 0; i < n; ++i) y[i] += a[i] * m[i];
    else
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] * m[i];
  } else {
    if (acc)
      for (int64_t i = 0; i < n; ++i) y[i] += a[i];
    else
      for (int64_t i = 0; i < n; ++i) y[i] = a[i];
  }
}

// True when none of the n values is NaN or +-Inf: a test of the exponent bits, an integer
// reduction the compiler vectorizes (no floating-point compare, no early exit).
template <class T>
bool finite_range(const T* __restrict p, int64_t n) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const U ex = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, p + i, sizeof(U));
    bad |= U((u & ex) == ex);
  }
  return bad == 0;
}
