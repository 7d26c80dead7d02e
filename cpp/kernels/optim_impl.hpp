// Optimizer loops, compiled twice: portable (optim.cpp) and AVX2 (optim_avx2.cpp). Included
// inside a namespace; needs <cmath>, <cstdint>, <type_traits> and optim.hpp before it.
// Constants travel by value and pointers are __restrict, so each variant is one straight
// vectorizable loop over [lo, hi); per-element branches are resolved at compile time.

template <class T>
struct SgdConst {
  T lr, wd, mom, damp1;
};

template <bool WD, bool MOM, bool FIRST, bool NEST, class T>
void sgd_range(const SgdConst<T> k, T* __restrict p, const T* __restrict g, T* __restrict buf,
               int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    T d = g[i];
    if constexpr (WD) d = d + k.wd * p[i];
    if constexpr (MOM) {
      T b;
      if constexpr (FIRST) b = d;
      else b = buf[i] * k.mom + k.damp1 * d;
      buf[i] = b;
      if constexpr (NEST) d = d + k.mom * b;
      else d = b;
    }
    p[i] = p[i] + (-k.lr) * d;
  }
}

template <class T>
struct AdamConst {
  T step_size, bc2_sqrt, w1, b2, w2, eps, wd, decay;
};

// MD 0: no decay; 1: L2 added to the gradient (Adam); 2: decoupled (AdamW).
template <int MD, class T>
void adam_range(const AdamConst<T> k, T* __restrict p, const T* __restrict g, T* __restrict m,
                T* __restrict v, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    T pi = p[i];
    T gi = g[i];
    if constexpr (MD == 2) pi = pi * k.decay;
    if constexpr (MD == 1) gi = gi + k.wd * pi;
    const T mi = m[i] + k.w1 * (gi - m[i]);  // torch: exp_avg.lerp_(grad, 1 - beta1)
    const T vi = v[i] * k.b2 + k.w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const T denom = std::sqrt(vi) / k.bc2_sqrt + k.eps;
    p[i] = pi + (-k.step_size) * mi / denom;
  }
}

// One optimizer step on elements [lo, hi); `step` is the tensor's step number (from 1).
template <class T>
void optimizer_range(const OptConfig& c, T* p, const T* g, T* s1, T* s2, int64_t lo, int64_t hi,
                     int64_t step) {
  if (c.kind == OptKind::SGD) {
    const SgdConst<T> k{T(c.lr), T(c.weight_decay), T(c.momentum), T(1.0 - c.dampening)};
    const bool wd = c.weight_decay != 0, first = step == 1, nest = c.nesterov;
    if (c.momentum == 0) {
      if (wd) sgd_range<true, false, false, false>(k, p, g, s1, lo, hi);
      else sgd_range<false, false, false, false>(k, p, g, s1, lo, hi);
      return;
    }
    auto with_mom = [&](auto WDC) {
      constexpr bool W = decltype(WDC)::value;
      if (first) {
        if (nest) sgd_range<W, true, true, true>(k, p, g, s1, lo, hi);
        else sgd_range<W, true, true, false>(k, p, g, s1, lo, hi);
      } else {
        if (nest) sgd_range<W, true, false, true>(k, p, g, s1, lo, hi);
        else sgd_range<W, true, false, false>(k, p, g, s1, lo, hi);
      }
    };
    if (wd) with_mom(std::true_type{});
    else with_mom(std::false_type{});
  } else if (c.kind == OptKind::Adam || c.kind == OptKind::AdamW) {
    const double bc1 = 1.0 - std::pow(c.beta1, double(step));
    const double bc2 = 1.0 - std::pow(c.beta2, double(step));
    const AdamConst<T> k{T(c.lr / bc1), T(std::sqrt(bc2)), T(1.0 - c.beta1), T(c.beta2),
                         T(1.0 - c.beta2), T(c.eps), T(c.weight_decay),
                         T(1.0 - c.lr * c.weight_decay)};
    if (c.weight_decay == 0) adam_range<0>(k, p, g, s1, s2, lo, hi);
    else if (c.kind == OptKind::Adam) adam_range<1>(k, p, g, s1, s2, lo, hi);
    else adam_range<2>(k, p, g, s1, s2, lo, hi);
  }
}
