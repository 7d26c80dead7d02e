// Adam and AdamW with PyTorch's bias corrections (torch.optim.Adam / AdamW, single-tensor
// path). Adam adds weight_decay * p to the gradient; AdamW first scales p by 1 - lr * wd.
// State: exp_avg, exp_avg_sq.
template <class T>
struct AdamConst {
  T step_size, bc2_sqrt, w1, b2, w2, eps, wd, decay;
  double inv_bc2_sqrt;  // 1 / double(bc2_sqrt), rounded once
};

// sqrt(v) / bc2_sqrt, correctly rounded. Where kQuotientByDoubleReciprocal is set (the
// AVX-512 build, whose divider is the loop's bottleneck: a sqrt and two divisions for every
// 16 floats) the float quotient is float(double(s) * double(1 / c)), which is the same number:
// for floats s and c, the exact s / c is never a rounding midpoint of float and lies at least
// 2^-49 (relative) from every one, because s - c * m is a nonzero multiple of a power of two
// for each midpoint m (25 significant bits); the double product is within 2^-52 of s / c, so
// it rounds to the same float. That holds for subnormal quotients and at overflow too.
// tests/test_adam_builds.py checks every build gives the same bits, and the identity itself
// on a sweep of float bit patterns.
template <class T>
inline T adam_scale_sqrt(T s, const AdamConst<T>& k) {
  if constexpr (kQuotientByDoubleReciprocal && std::is_same_v<T, float>)
    return static_cast<T>(static_cast<double>(s) * k.inv_bc2_sqrt);
  else
    return s / k.bc2_sqrt;
}

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
    const T denom = adam_scale_sqrt(std::sqrt(vi), k) + k.eps;
    p[i] = pi + (-k.step_size) * mi / denom;
  }
}

struct AdamRule {
  static constexpr int kWork = 4;
  static int num_slots(const OptConfig&) { return 2; }
  static const char* slot_name(const OptConfig&, int k) { return k == 0 ? "exp_avg" : "exp_avg_sq"; }
  static double slot_init(const OptConfig&, int) { return 0.0; }
  static bool slot_nonneg(const OptConfig&, int k) { return k == 1; }
  static void validate(const OptConfig& c) {
    check_nonneg("lr", c.lr);
    check_unit("betas[0]", c.beta1);
    check_unit("betas[1]", c.beta2);
    check_nonneg("eps", c.eps);
    check_nonneg("weight_decay", c.weight_decay);
  }
  template <class T>
  static void range(const OptConfig& c, T* p, const T* g, T* const* s, int64_t lo, int64_t hi, int64_t step) {
    const double bc1 = 1.0 - std::pow(c.beta1, double(step));
    const double bc2 = 1.0 - std::pow(c.beta2, double(step));
    const T bc2_sqrt = T(std::sqrt(bc2));
    const AdamConst<T> k{T(c.lr / bc1), bc2_sqrt, T(1.0 - c.beta1), T(c.beta2),
                         T(1.0 - c.beta2), T(c.eps), T(c.weight_decay),
                         T(1.0 - c.lr * c.weight_decay), 1.0 / static_cast<double>(bc2_sqrt)};
    if (c.weight_decay == 0) adam_range<0>(k, p, g, s[0], s[1], lo, hi);
    else if (c.kind == OptKind::Adam) adam_range<1>(k, p, g, s[0], s[1], lo, hi);
    else adam_range<2>(k, p, g, s[0], s[1], lo, hi);
  }
};
