// Dropout and column concatenation as kernels: pure functions over raw pointers, the same
// results for any thread count.
#pragma once
#include <cstdint>
#include <cstring>

#include "layerprop/runtime.hpp"

namespace lp::kern {

// splitmix64 finalizer: a counter-based generator, one independent draw per element.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Dropout, forward: mask[i] = 0 with probability p, else 1/(1-p), drawn from the hash of
// (key, i) (reuse: the masks already in `mask`); y = x * mask (n elements). The backward is
// mul_into (eltwise.hpp) with the same mask.
template <class T>
void dropout_forward(T* y, T* mask, const T* x, int64_t n, double p, uint64_t key, bool reuse) {
  const T scale = p < 1 ? T(1.0 / (1.0 - p)) : T(0);
  parallel_range(n, Work::EltCostly, n / 4, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      if (!reuse) {
        const double u = static_cast<double>(mix64(key ^ mix64(static_cast<uint64_t>(i))) >> 11) * 0x1.0p-53;
        mask[i] = u >= p ? scale : T(0);
      }
      y[i] = x[i] * mask[i];
    }
  });
}

// Concat, forward for one input: columns [c0, c0 + wk) of y (N, W) = x (N, wk).
template <class T>
void concat_forward(T* y, const T* x, int64_t N, int64_t W, int64_t c0, int64_t wk) {
  for (int64_t r = 0; r < N; ++r) std::memcpy(y + r * W + c0, x + r * wk, sizeof(T) * static_cast<size_t>(wk));
}

// Concat, backward for one input: dx (N, wk) (+)= columns [c0, c0 + wk) of dy (N, W).
template <class T>
void concat_backward(T* dx, const T* dy, int64_t N, int64_t W, int64_t c0, int64_t wk, bool accumulate) {
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < wk; ++c)
      dx[r * wk + c] = accumulate ? dx[r * wk + c] + dy[r * W + c0 + c] : dy[r * W + c0 + c];
}

}  // namespace lp::kern
