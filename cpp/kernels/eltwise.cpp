// Element-wise dispatch: threads split the elements (columns for colsum); each range runs the
// AVX2 or the portable build of the same loops (eltwise_impl.hpp).
#include "layerprop/eltwise.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "layerprop/runtime.hpp"

namespace lp::kern {
namespace generic {
#include "eltwise_impl.hpp"
}
#ifdef LAYERPROP_HAVE_AVX2
namespace avx2 {
#define LP_ELTWISE_DECLARE(T, S)                                                                \
  void act_fwd_##S(T*, const T*, int64_t, Act, ActParams<T>);                                   \
  void act_bwd_##S(T*, const T*, const T*, const T*, int64_t, Act, ActParams<T>, bool);         \
  void bias_act_##S(T*, int64_t, int64_t, int64_t, const T*, Act, ActParams<T>, T*, int64_t);   \
  void colsum_##S(T*, const T*, int64_t, int64_t, int64_t, bool);                               \
  void add_##S(T*, const T*, const T*, int64_t, bool);                                          \
  bool finite_##S(const T*, int64_t);                                                            \
  void exp_##S(T*, int64_t);
LP_ELTWISE_DECLARE(float, f32)
LP_ELTWISE_DECLARE(double, f64)
#undef LP_ELTWISE_DECLARE
}  // namespace avx2
#endif
#ifdef LAYERPROP_HAVE_AVX512
namespace avx512 {
bool finite_f32(const float*, int64_t);  // eltwise_avx512.cpp
}  // namespace avx512
#endif

namespace {

#ifdef LAYERPROP_HAVE_AVX2
// The finiteness scan: AVX-512's where the CPU has it, else AVX2's (the same answer).
bool (*finite_f32_build())(const float*, int64_t) {
#ifdef LAYERPROP_HAVE_AVX512
  if (use_avx512()) return &avx512::finite_f32;
#endif
  return &avx2::finite_f32;
}
#endif

// The loops of one build for one element type.
template <class T>
struct Loops {
  void (*fwd)(T*, const T*, int64_t, Act, ActParams<T>);
  void (*bwd)(T*, const T*, const T*, const T*, int64_t, Act, ActParams<T>, bool);
  void (*bias_act)(T*, int64_t, int64_t, int64_t, const T*, Act, ActParams<T>, T*, int64_t);
  void (*colsum)(T*, const T*, int64_t, int64_t, int64_t, bool);
  void (*add)(T*, const T*, const T*, int64_t, bool);
  bool (*finite)(const T*, int64_t);
  void (*exp)(T*, int64_t);
};

template <class T>
const Loops<T>& loops() {
  static const Loops<T> l = [] {
#ifdef LAYERPROP_HAVE_AVX2
    if (use_avx2()) {
      if constexpr (std::is_same_v<T, float>)
        return Loops<T>{&avx2::act_fwd_f32, &avx2::act_bwd_f32, &avx2::bias_act_f32, &avx2::colsum_f32,
                        &avx2::add_f32, finite_f32_build(), &avx2::exp_f32};
      else
        return Loops<T>{&avx2::act_fwd_f64, &avx2::act_bwd_f64, &avx2::bias_act_f64, &avx2::colsum_f64,
                        &avx2::add_f64, &avx2::finite_f64, &avx2::exp_f64};
    }
#endif
    return Loops<T>{&generic::act_fwd_range<T>, &generic::act_bwd_range<T>, &generic::bias_act_range<T>,
                    &generic::colsum_range<T>, &generic::add_range<T>, &generic::finite_range<T>,
                    &generic::exp_range<T>};
  }();
  return l;
}

// Threads pay for element-wise loops only on large arrays: cheap activations are memory-bound.
Work act_work(Act act) { return act_is_cheap(act) ? Work::EltCheap : Work::EltCostly; }

}  // namespace

template <class T>
void act_forward(T* y, const T* x, int64_t n, Act act, ActParams<T> ap) {
  const auto fn = loops<T>().fwd;
  parallel_range(n, act_work(act), n, [&](int64_t b, int64_t e) { fn(y + b, x + b, e - b, act, ap); });
}

template <class T>
void act_backward(T* dx, const T* dy, const T* x, const T* y, int64_t n, Act act, ActParams<T> ap, bool accumulate) {
  const auto fn = loops<T>().bwd;
  parallel_range(n, act_work(act), n, [&](int64_t b, int64_t e) {
    fn(dx + b, dy + b, x + b, y + b, e - b, act, ap, accumulate);
  });
}

template <class T>
void bias_act(T* C, int64_t ldc, int64_t mr, int64_t nr, const T* bias, Act act, ActParams<T> ap, T* act_out,
              int64_t ld_act) {
  loops<T>().bias_act(C, ldc, mr, nr, bias, act, ap, act_out, ld_act);
}

template <class T>
void add_into(T* y, const T* a, int64_t n, bool accumulate) {
  const auto fn = loops<T>().add;
  parallel_range(n, Work::EltCheap, n, [&](int64_t b, int64_t e) { fn(y + b, a + b, nullptr, e - b, accumulate); });
}

template <class T>
void mul_into(T* y, const T* a, const T* m, int64_t n, bool accumulate) {
  const auto fn = loops<T>().add;
  parallel_range(n, Work::EltCheap, n, [&](int64_t b, int64_t e) { fn(y + b, a + b, m + b, e - b, accumulate); });
}

template <class T>
void colsum(T* db, const T* dz, int64_t N, int64_t C, bool accumulate) {
  const auto fn = loops<T>().colsum;
  parallel_range(C, Work::EltCheap, N * C, [&](int64_t j0, int64_t j1) {
    fn(db + j0, dz + j0, N, C, j1 - j0, accumulate);
  });
}

template <class T>
bool all_finite(const T* p, int64_t n) {
  const auto fn = loops<T>().finite;
  std::atomic<bool> ok{true};
  parallel_range(n, Work::EltCheap, n / 4, [&](int64_t b, int64_t e) {
    if (!fn(p + b, e - b)) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

template <class T>
void exp_nonpos_inplace(T* v, int64_t n) {
  loops<T>().exp(v, n);
}

#define LP_ELTWISE_INSTANTIATE(T)                                                                   \
  template void act_forward<T>(T*, const T*, int64_t, Act, ActParams<T>);                              \
  template void act_backward<T>(T*, const T*, const T*, const T*, int64_t, Act, ActParams<T>, bool);         \
  template void bias_act<T>(T*, int64_t, int64_t, int64_t, const T*, Act, ActParams<T>, T*, int64_t);         \
  template void add_into<T>(T*, const T*, int64_t, bool);                                           \
  template void mul_into<T>(T*, const T*, const T*, int64_t, bool);                                 \
  template void colsum<T>(T*, const T*, int64_t, int64_t, bool);                                    \
  template bool all_finite<T>(const T*, int64_t);                                                  \
  template void exp_nonpos_inplace<T>(T*, int64_t);
LP_ELTWISE_INSTANTIATE(float)
LP_ELTWISE_INSTANTIATE(double)
#undef LP_ELTWISE_INSTANTIATE

}  // namespace lp::kern
