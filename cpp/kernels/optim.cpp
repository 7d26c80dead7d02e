#include "layerprop/optim.hpp"

#include <cmath>

#include "layerprop/runtime.hpp"

namespace lp::kern {

template <class T>
static void sgd(const OptConfig& c, T* p, const T* g, T* buf, int64_t n, int64_t step) {
  const T lr = T(c.lr), wd = T(c.weight_decay), mom = T(c.momentum);
  const T damp1 = T(1.0 - c.dampening);
  const bool has_wd = c.weight_decay != 0, has_mom = c.momentum != 0, first = step == 1;
  const bool nesterov = c.nesterov;
  parallel_range(n, n, int64_t(1) << 16, [&](int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    T d = g[i];
    if (has_wd) d = d + wd * p[i];
    if (has_mom) {
      T b = first ? d : buf[i] * mom + damp1 * d;
      buf[i] = b;
      d = nesterov ? d + mom * b : b;
    }
    p[i] = p[i] + (-lr) * d;
  }
  });
}

template <class T>
static void adam(const OptConfig& c, T* p, const T* g, T* m, T* v, int64_t n, int64_t step) {
  const bool decoupled = c.kind == OptKind::AdamW;
  const double bc1 = 1.0 - std::pow(c.beta1, double(step));
  const double bc2 = 1.0 - std::pow(c.beta2, double(step));
  const T step_size = T(c.lr / bc1);
  const T bc2_sqrt = T(std::sqrt(bc2));
  const T w1 = T(1.0 - c.beta1), b2 = T(c.beta2), w2 = T(1.0 - c.beta2), eps = T(c.eps);
  const T wd = T(c.weight_decay), decay = T(1.0 - c.lr * c.weight_decay);
  const bool has_wd = c.weight_decay != 0;
  parallel_range(n, n, int64_t(1) << 15, [&](int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    T pi = p[i];
    T gi = g[i];
    if (has_wd) {
      if (decoupled) pi = pi * decay;
      else gi = gi + wd * pi;
    }
    const T mi = m[i] + w1 * (gi - m[i]);  // lerp(m, g, 1-beta1)
    const T vi = v[i] * b2 + w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const T denom = std::sqrt(vi) / bc2_sqrt + eps;
    p[i] = pi + (-step_size) * mi / denom;
  }
  });
}

template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* s1, T* s2, int64_t n,
                    int64_t step) {
  switch (cfg.kind) {
    case OptKind::SGD: sgd(cfg, p, g, s1, n, step); break;
    case OptKind::Adam:
    case OptKind::AdamW: adam(cfg, p, g, s1, s2, n, step); break;
    case OptKind::None: break;
  }
}

template void optimizer_step<float>(const OptConfig&, float*, const float*, float*, float*,
                                    int64_t, int64_t);
template void optimizer_step<double>(const OptConfig&, double*, const double*, double*, double*,
                                     int64_t, int64_t);

}  // namespace lp::kern
