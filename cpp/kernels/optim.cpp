// Optimizer dispatch: threads split the elements; each range runs the AVX-512, the AVX2 or
// the portable build of the same loops (optim_impl.hpp), which give the same bits.
#include "layerprop/optim.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "layerprop/common.hpp"
#include "layerprop/runtime.hpp"

namespace lp::kern {
namespace generic {
constexpr bool kQuotientByDoubleReciprocal = false;  // see optim/adam.hpp
#include "optim_impl.hpp"
}
#define LP_OPTIM_DECLARE                                                                             \
  void optimizer_range_f32(const OptConfig&, float*, const float*, float* const*, int64_t, int64_t, int64_t); \
  void optimizer_range_f64(const OptConfig&, double*, const double*, double* const*, int64_t, int64_t, int64_t);
#ifdef LAYERPROP_HAVE_AVX2
namespace avx2 {
LP_OPTIM_DECLARE
}  // namespace avx2
#endif
#ifdef LAYERPROP_HAVE_AVX512
namespace avx512 {
LP_OPTIM_DECLARE
}  // namespace avx512
#endif
#undef LP_OPTIM_DECLARE

namespace {
// fn(Rule{}) with the rule registered for `kind` (LAYERPROP_OPTIMIZERS); `fallback` for None.
template <class R, class Fn>
R with_rule(OptKind kind, R fallback, Fn&& fn) {
  switch (kind) {
#define LAYERPROP_OPT_CASE(k, file, rule) \
  case OptKind::k: return fn(generic::rule{});
    LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_CASE)
#undef LAYERPROP_OPT_CASE
    default: return fallback;
  }
}
}  // namespace

template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* const* slots, int64_t n, int64_t step) {
  if (cfg.kind == OptKind::None) return;
  using Fn = void (*)(const OptConfig&, T*, const T*, T* const*, int64_t, int64_t, int64_t);
  static const Fn fn = [] {
#ifdef LAYERPROP_HAVE_AVX512
    if (use_avx512()) {
      if constexpr (std::is_same_v<T, float>) return Fn(&avx512::optimizer_range_f32);
      else return Fn(&avx512::optimizer_range_f64);
    }
#endif
#ifdef LAYERPROP_HAVE_AVX2
    if (use_avx2()) {
      if constexpr (std::is_same_v<T, float>) return Fn(&avx2::optimizer_range_f32);
      else return Fn(&avx2::optimizer_range_f64);
    }
#endif
    return Fn(&generic::optimizer_range<T>);
  }();
  const int64_t work = with_rule(cfg.kind, 1, [](auto r) { return decltype(r)::kWork; });
  parallel_range(n, Work::Optim, work * n, [&](int64_t lo, int64_t hi) { fn(cfg, p, g, slots, lo, hi, step); });
}

int optimizer_num_slots(const OptConfig& cfg) {
  return with_rule(cfg.kind, 0, [&](auto r) { return decltype(r)::num_slots(cfg); });
}
const char* optimizer_slot_name(const OptConfig& cfg, int k) {
  return with_rule(cfg.kind, static_cast<const char*>(""), [&](auto r) { return decltype(r)::slot_name(cfg, k); });
}
double optimizer_slot_init(const OptConfig& cfg, int k) {
  return with_rule(cfg.kind, 0.0, [&](auto r) { return decltype(r)::slot_init(cfg, k); });
}
bool optimizer_slot_nonneg(const OptConfig& cfg, int k) {
  return with_rule(cfg.kind, false, [&](auto r) { return decltype(r)::slot_nonneg(cfg, k); });
}
void validate_optimizer(const OptConfig& cfg) {
  if (static_cast<int>(cfg.kind) < 0 || static_cast<int>(cfg.kind) >= static_cast<int>(OptKind::Count))
    throw ValueError("optimizer: unknown optimizer");
  with_rule(cfg.kind, 0, [&](auto r) {
    decltype(r)::validate(cfg);
    return 0;
  });
}

template <class T>
double clip_gradients(const ClipConfig& clip, T* g, int64_t n) {
  if (clip.max_value > 0) {
    const T hi = static_cast<T>(clip.max_value), lo = -hi;
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] < lo ? lo : (g[i] > hi ? hi : g[i]);  // NaN stays NaN
  }
  // Four running sums, combined in a fixed order: one dependency chain would be latency-bound.
  double acc[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) acc[k] += static_cast<double>(g[i + k]) * static_cast<double>(g[i + k]);
  for (; i < n; ++i) acc[0] += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  const double total = std::sqrt((acc[0] + acc[1]) + (acc[2] + acc[3]));
  if (clip.max_norm > 0 && std::isfinite(total)) {
    const double coef = clip.max_norm / (total + 1e-6);
    if (coef < 1) {
      const T c = static_cast<T>(coef);
      for (int64_t j = 0; j < n; ++j) g[j] *= c;
    }
  }
  return total;
}

template double clip_gradients<float>(const ClipConfig&, float*, int64_t);
template double clip_gradients<double>(const ClipConfig&, double*, int64_t);

template void optimizer_step<float>(const OptConfig&, float*, const float*, float* const*, int64_t, int64_t);
template void optimizer_step<double>(const OptConfig&, double*, const double*, double* const*, int64_t,
                                     int64_t);

}  // namespace lp::kern
