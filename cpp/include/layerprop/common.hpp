// Shared small types of the layerprop core: aligned buffers, activation kinds, errors.
#pragma once
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace lp {

// An on-by-default switch read from the environment: off only when `name` is set to "0".
inline bool env_switch_on(const char* name) {
  const char* env = std::getenv(name);
  return !(env && env[0] == '0' && env[1] == '\0');
}

// 64-byte aligned allocator: SIMD loads of parameter/activation rows start on cache lines.
// Buffers of 4 MB and more are asked to be backed by 2 MB pages (madvise MADV_HUGEPAGE, which
// Linux honours in its default "madvise" mode): a layer of L (2048 x 2048) reads W and its
// activations with row strides that otherwise miss the TLB; its step measured 3% faster.
// LAYERPROP_HUGE_PAGES=0 turns it off.
inline bool huge_pages_enabled() {
  static const bool on = env_switch_on("LAYERPROP_HUGE_PAGES");
  return on;
}

template <class T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <class U>
  AlignedAlloc(const AlignedAlloc<U>&) noexcept {}
  T* allocate(std::size_t n) {
    std::size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr std::size_t kHuge = std::size_t(2) << 20;
    if (bytes >= 2 * kHuge && huge_pages_enabled()) {
      bytes = (bytes + kHuge - 1) / kHuge * kHuge;
      void* p = std::aligned_alloc(kHuge, bytes);
      if (!p) throw std::bad_alloc();
      madvise(p, bytes, MADV_HUGEPAGE);  // a hint: refused or unsupported, the pages stay small
      return static_cast<T*>(p);
    }
#endif
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

// X(kind, functor file stem, functor): the activation table. Each functor is one file under
// cpp/kernels/act/ with f(x) and df(x, y); codes follow the order (Identity = 0).
#define LAYERPROP_ACTIVATIONS(X)      \
  X(Identity, identity, IdentityF)    \
  X(ReLU, relu, ReluF)                \
  X(LeakyReLU, leaky_relu, LeakyReluF) \
  X(Tanh, tanh, TanhF)                \
  X(Sigmoid, sigmoid, SigmoidF)       \
  X(GELU, gelu, GeluF)                \
  X(SiLU, silu, SiluF)                \
  X(ELU, elu, EluF)                   \
  X(Softplus, softplus, SoftplusF)

#define LAYERPROP_ACT_ENUM(kind, file, functor) kind,
enum class Act : int { LAYERPROP_ACTIVATIONS(LAYERPROP_ACT_ENUM) Count };
#undef LAYERPROP_ACT_ENUM
// An activation's settings by name; each functor reads the ones it knows.
struct ActSettings {
  double negative_slope = 0.01;        // LeakyReLU
  double alpha = 1.0;                  // ELU
  double beta = 1.0, threshold = 20.0; // Softplus
};
enum class LossKind : int { CrossEntropy = 0, MSE, BCEWithLogits, Poisson, Count };  // Count: sentinel

// Errors a user can trigger; the bindings map them to ValueError / TypeError.
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// A buffer the model would need is larger than this machine can hold, or its size overflows
// 64 bits: raised (as MemoryError) before anything is allocated or zero-filled.
struct MemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A training step met a non-finite loss or gradient; the step was not applied.
struct NonFiniteError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// a * b for sizes, or MemoryError naming `what` if the product overflows int64.
inline int64_t checked_mul(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
    throw MemoryError(what + ": size " + std::to_string(a) + " x " + std::to_string(b) + " overflows");
  return r;
}
inline int64_t checked_add(int64_t a, int64_t b, const std::string& what) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) throw MemoryError(what + ": size overflows");
  return r;
}
// Bytes of physical memory on this machine (0 if unknown).
int64_t physical_memory_bytes();
// MemoryError naming `what` and the bytes asked for if `bytes` exceeds physical memory:
// checked before allocating, so an impossible request never reaches the allocator (which,
// with overcommit, would hand out pages that the zero-fill then cannot back).
void check_allocation(int64_t bytes, const std::string& what);

}  // namespace lp
