// Optimizer dispatch: threads split the elements; each range runs the AVX2 or the portable
// build of the same loops (optim_impl.hpp).
#include "layerprop/optim.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "layerprop/common.hpp"
#include "layerprop/runtime.hpp"

namespace lp::kern {
namespace generic {
#include "optim_impl.hpp"
}
#ifdef LAYERPROP_HAVE_AVX2
namespace avx2 {
void optimizer_range_f32(const OptConfig&, float*, const float*, float* const*, int64_t, int64_t, int64_t);
void optimizer_range_f64(const OptConfig&, double*, const double*, double* const*, int64_t, int64_t, int64_t);
}  // namespace avx2
#endif

template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* const* slots, int64_t n, int64_t step) {
  if (cfg.kind == OptKind::None) return;
  using Fn = void (*)(const OptConfig&, T*, const T*, T* const*, int64_t, int64_t, int64_t);
  static const Fn fn = [] {
#ifdef LAYERPROP_HAVE_AVX2
    if (use_avx2()) {
      if constexpr (std::is_same_v<T, float>) return Fn(&avx2::optimizer_range_f32);
      else return Fn(&avx2::optimizer_range_f64);
    }
#endif
    return Fn(&generic::optimizer_range<T>);
  }();
  int work = 1;
  switch (cfg.kind) {
#define LAYERPROP_OPT_WORK(kind, file, rule) \
  case OptKind::kind: work = generic::rule::kWork; break;
    LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_WORK)
#undef LAYERPROP_OPT_WORK
    default: break;
  }
  parallel_range(n, work * n, int64_t(1) << 17, [&](int64_t lo, int64_t hi) { fn(cfg, p, g, slots, lo, hi, step); });
}

// The rule table's facts, by kind.
#define LAYERPROP_OPT_DISPATCH(call, fallback)                 \
  switch (cfg.kind) {                                          \
    LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_DISPATCH_CASE)          \
    default: return fallback;                                  \
  }

int optimizer_num_slots(const OptConfig& cfg) {
#define LAYERPROP_OPT_DISPATCH_CASE(kind, file, rule) case OptKind::kind: return generic::rule::num_slots(cfg);
  LAYERPROP_OPT_DISPATCH(num_slots, 0)
#undef LAYERPROP_OPT_DISPATCH_CASE
}
const char* optimizer_slot_name(const OptConfig& cfg, int k) {
#define LAYERPROP_OPT_DISPATCH_CASE(kind, file, rule) case OptKind::kind: return generic::rule::slot_name(cfg, k);
  LAYERPROP_OPT_DISPATCH(slot_name, "")
#undef LAYERPROP_OPT_DISPATCH_CASE
}
double optimizer_slot_init(const OptConfig& cfg, int k) {
#define LAYERPROP_OPT_DISPATCH_CASE(kind, file, rule) case OptKind::kind: return generic::rule::slot_init(cfg, k);
  LAYERPROP_OPT_DISPATCH(slot_init, 0.0)
#undef LAYERPROP_OPT_DISPATCH_CASE
}
bool optimizer_slot_nonneg(const OptConfig& cfg, int k) {
#define LAYERPROP_OPT_DISPATCH_CASE(kind, file, rule) case OptKind::kind: return generic::rule::slot_nonneg(cfg, k);
  LAYERPROP_OPT_DISPATCH(slot_nonneg, false)
#undef LAYERPROP_OPT_DISPATCH_CASE
}
void validate_optimizer(const OptConfig& cfg) {
  if (static_cast<int>(cfg.kind) < 0 || static_cast<int>(cfg.kind) >= static_cast<int>(OptKind::Count))
    throw ValueError("optimizer: unknown optimizer");
  switch (cfg.kind) {
#define LAYERPROP_OPT_VALIDATE(kind, file, rule) case OptKind::kind: return generic::rule::validate(cfg);
    LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_VALIDATE)
#undef LAYERPROP_OPT_VALIDATE
    default: return;
  }
}
const char* optimizer_name(OptKind kind) {
  switch (kind) {
#define LAYERPROP_OPT_NAME(k, file, rule) case OptKind::k: return #k;
    LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_NAME)
#undef LAYERPROP_OPT_NAME
    default: return "None";
  }
}
#undef LAYERPROP_OPT_DISPATCH

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
