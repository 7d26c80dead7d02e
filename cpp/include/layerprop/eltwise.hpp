// Element-wise kernels: activations forward and backward, the GEMM epilogue (bias +
// activation), bias gradients and gradient fan-in. Each runs the AVX2 or the portable build of
// the same loops (cpp/kernels/eltwise_impl.hpp), split across threads only above a size where
// that pays. Results never depend on the build, the thread count or the split.
#pragma once
#include <cstdint>

#include "layerprop/common.hpp"

namespace lp::kern {

inline bool act_is_cheap(Act a) { return a == Act::Identity || a == Act::ReLU || a == Act::LeakyReLU; }

// An activation's settings in the element type (see ActSettings).
template <class T>
struct ActParams {
  T negative_slope = T(0.01), alpha = T(1), beta = T(1), threshold = T(20);
  ActParams() = default;
  explicit ActParams(const ActSettings& s)
      : negative_slope(T(s.negative_slope)), alpha(T(s.alpha)), beta(T(s.beta)), threshold(T(s.threshold)) {}
};

// y[i] = f(x[i]) for n elements (y and x do not overlap).
template <class T>
void act_forward(T* y, const T* x, int64_t n, Act act, ActParams<T> ap);

// dx[i] = dy[i] * f'(x[i], y[i]); accumulate adds into dx instead. No argument overlaps dx.
template <class T>
void act_backward(T* dx, const T* dy, const T* x, const T* y, int64_t n, Act act, ActParams<T> ap,
                  bool accumulate);

// Serial epilogue of an (mr x nr) block: C += bias (nr, or null); act_out = f(C) if set.
template <class T>
void bias_act(T* C, int64_t ldc, int64_t mr, int64_t nr, const T* bias, Act act, ActParams<T> ap,
              T* act_out, int64_t ld_act);

// y = a (or y += a when accumulating into y): add nodes and gradient fan-in.
template <class T>
void add_into(T* y, const T* a, int64_t n, bool accumulate);

// y = a * m (or y += a * m): gradient through a fixed mask.
template <class T>
void mul_into(T* y, const T* a, const T* m, int64_t n, bool accumulate);

// db (C) (+)= column sums of dz (N,C), rows summed in order: bias gradient.
template <class T>
void colsum(T* db, const T* dz, int64_t N, int64_t C, bool accumulate);

// True when no element of p (n) is NaN or +-Inf: input scans and the training guard.
template <class T>
bool all_finite(const T* p, int64_t n);

// v[i] = exp(v[i]) for n values <= 0 (NaN stays NaN), serially: a softmax's exponentials, with
// the same bits in every build (kernels/exp_nonpos.hpp).
template <class T>
void exp_nonpos_inplace(T* v, int64_t n);

}  // namespace lp::kern
