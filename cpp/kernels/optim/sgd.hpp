// SGD with PyTorch's momentum, dampening, nesterov and weight_decay (torch.optim.SGD,
// single-tensor path). State: momentum_buffer (only with momentum), taken from the first
// step's gradient.
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

struct SgdRule {
  static constexpr int kWork = 1;  // relative cost per element (threading grain)
  static int num_slots(const OptConfig& c) { return c.momentum != 0 ? 1 : 0; }
  static const char* slot_name(const OptConfig&, int) { return "momentum_buffer"; }
  static double slot_init(const OptConfig&, int) { return 0.0; }
  static bool slot_nonneg(const OptConfig&, int) { return false; }
  static void validate(const OptConfig& c) {
    check_nonneg("lr", c.lr);
    check_nonneg("momentum", c.momentum);
    check_finite("dampening", c.dampening);
    check_nonneg("weight_decay", c.weight_decay);
    if (c.nesterov && (c.momentum <= 0 || c.dampening != 0))
      throw ValueError("nesterov: requires momentum > 0 and dampening == 0");
  }
  template <class T>
  static void range(const OptConfig& c, T* p, const T* g, T* const* s, int64_t lo, int64_t hi, int64_t step) {
    const SgdConst<T> k{T(c.lr), T(c.weight_decay), T(c.momentum), T(1.0 - c.dampening)};
    const bool wd = c.weight_decay != 0, first = step == 1, nest = c.nesterov;
    if (c.momentum == 0) {
      if (wd) sgd_range<true, false, false, false>(k, p, g, static_cast<T*>(nullptr), lo, hi);
      else sgd_range<false, false, false, false>(k, p, g, static_cast<T*>(nullptr), lo, hi);
      return;
    }
    T* buf = s[0];
    auto with_mom = [&](auto WDC) {
      constexpr bool W = decltype(WDC)::value;
      if (first) {
        if (nest) sgd_range<W, true, true, true>(k, p, g, buf, lo, hi);
        else sgd_range<W, true, true, false>(k, p, g, buf, lo, hi);
      } else {
        if (nest) sgd_range<W, true, false, true>(k, p, g, buf, lo, hi);
        else sgd_range<W, true, false, false>(k, p, g, buf, lo, hi);
      }
    };
    if (wd) with_mom(std::true_type{});
    else with_mom(std::false_type{});
  }
};
