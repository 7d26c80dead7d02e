// Optimizer dispatch: threads split the elements; each range runs the AVX2 or the portable
// build of the same loops (optim_impl.hpp).
#include "layerprop/optim.hpp"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "layerprop/runtime.hpp"

namespace lp::kern {
namespace generic {
#include "optim_impl.hpp"
}
#ifdef LAYERPROP_HAVE_AVX2
namespace avx2 {
void optimizer_range_f32(const OptConfig&, float*, const float*, float*, float*, int64_t, int64_t, int64_t);
void optimizer_range_f64(const OptConfig&, double*, const double*, double*, double*, int64_t, int64_t, int64_t);
}  // namespace avx2
#endif

template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* s1, T* s2, int64_t n,
                    int64_t step) {
  if (cfg.kind == OptKind::None) return;
  using Fn = void (*)(const OptConfig&, T*, const T*, T*, T*, int64_t, int64_t, int64_t);
  static const Fn fn = [] {
#ifdef LAYERPROP_HAVE_AVX2
    if (use_avx2()) {
      if constexpr (std::is_same_v<T, float>) return Fn(&avx2::optimizer_range_f32);
      else return Fn(&avx2::optimizer_range_f64);
    }
#endif
    return Fn(&generic::optimizer_range<T>);
  }();
  const int64_t work = cfg.kind == OptKind::SGD ? n : 4 * n;
  parallel_range(n, work, int64_t(1) << 17, [&](int64_t lo, int64_t hi) { fn(cfg, p, g, s1, s2, lo, hi, step); });
}

template void optimizer_step<float>(const OptConfig&, float*, const float*, float*, float*,
                                    int64_t, int64_t);
template void optimizer_step<double>(const OptConfig&, double*, const double*, double*, double*,
                                     int64_t, int64_t);

}  // namespace lp::kern
