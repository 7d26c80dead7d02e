// Shared small types of the layerprop core: aligned buffers, activation kinds, errors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace lp {

// 64-byte aligned allocator: SIMD loads of parameter/activation rows start on cache lines.
template <class T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <class U>
  AlignedAlloc(const AlignedAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) {
    std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }
  template <class U>
  bool operator==(const AlignedAlloc<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const AlignedAlloc<U>&) const noexcept { return false; }
};
template <class T>
using Buffer = std::vector<T, AlignedAlloc<T>>;

enum class Act : int { Identity = 0, ReLU, LeakyReLU, Tanh, Sigmoid, GELU };
enum class LossKind : int { CrossEntropy = 0, MSE, BCEWithLogits };

// Errors a user can trigger; the bindings map them to ValueError / TypeError.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

}  // namespace lp
