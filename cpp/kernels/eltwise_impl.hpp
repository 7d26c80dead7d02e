// Element-wise loops, compiled twice: portable (eltwise.cpp) and AVX2 (eltwise_avx2.cpp), like
// the optimizer loops. Included inside a namespace; needs <algorithm>, <cmath>, <cstdint>, <cstring>,
// <type_traits>, layerprop/common.hpp and layerprop/eltwise.hpp before it. Pointers are __restrict and the activation is resolved before
// each loop, so every loop is one straight vectorizable pass. No FMA contraction in either
// build: an element's value is the same whichever build, thread or tail computes it.

// Activation functors, one file each under act/: f(x) forward; df(x, y) derivative given
// input x and output y = f(x); constructed from ActParams. LAYERPROP_ACTIVATIONS registers them.
#include "exp_nonpos.hpp"

#include "act/identity.hpp"
#include "act/relu.hpp"
#include "act/leaky_relu.hpp"
#include "act/tanh.hpp"
#include "act/sigmoid.hpp"
#include "act/gelu.hpp"
#include "act/silu.hpp"
#include "act/elu.hpp"
#include "act/softplus.hpp"

// Calls fn(functor) with the functor for `act`.
template <class T, class Fn>
inline void dispatch_act(Act act, const ActParams<T>& ap, Fn&& fn) {
  switch (act) {
#define LAYERPROP_ACT_CASE(kind, file, functor) \
  case Act::kind: fn(functor<T>(ap)); return;
    LAYERPROP_ACTIVATIONS(LAYERPROP_ACT_CASE)
#undef LAYERPROP_ACT_CASE
    default: fn(IdentityF<T>(ap)); return;
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
void act_fwd_range(T* __restrict y, const T* __restrict x, int64_t n, Act act, ActParams<T> ap) {
  dispatch_act<T>(act, ap, [&](auto F) { fwd_loop(F, y, x, n); });
}

// dx[i] (+)= dy[i] * f'(x[i], y[i]).
template <class T>
void act_bwd_range(T* __restrict dx, const T* __restrict dy, const T* __restrict x,
                   const T* __restrict y, int64_t n, Act act, ActParams<T> ap, bool acc) {
  dispatch_act<T>(act, ap, [&](auto F) { bwd_loop(F, dx, dy, x, y, n, acc); });
}

// The final values of an (mr x nr) block of a product: C += bias (nr, or null); then, if
// act_out is set, act_out = f(C). C and act_out never overlap.
template <class T>
void bias_act_range(T* __restrict C, int64_t ldc, int64_t mr, int64_t nr, const T* __restrict bias,
                    Act act, ActParams<T> ap, T* __restrict act_out, int64_t ld_act) {
  dispatch_act<T>(act, ap, [&](auto F) {
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

// v[i] = exp(v[i]) for v[i] <= 0 (or NaN): the softmax's exponentials (exp_nonpos.hpp).
template <class T>
void exp_range(T* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) v[i] = exp_nonpos(v[i]);
}
