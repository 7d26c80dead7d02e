// RMSprop (torch.optim.RMSprop, single-tensor path, same operation order):
//   g += weight_decay * p;  square_avg = square_avg * alpha + (1 - alpha) * g * g
//   centered: grad_avg.lerp_(g, 1 - alpha); avg = sqrt(square_avg - grad_avg^2) + eps
//   else:     avg = sqrt(square_avg) + eps
//   momentum > 0: buf = buf * momentum + g / avg; p -= lr * buf
//   else:         p -= lr * g / avg
// State: square_avg, then momentum_buffer (momentum > 0), then grad_avg (centered).
template <class T>
struct RmsConst {
  T lr, wd, alpha, w, omw, eps, mom;
};

// SMALL: the lerp weight 1 - alpha is < 0.5 (torch's lerp takes the other form otherwise).
template <bool WD, bool CENTERED, bool SMALL, bool MOM, class T>
void rmsprop_range(const RmsConst<T> k, T* __restrict p, const T* __restrict g, T* __restrict sq,
                   T* __restrict buf, T* __restrict ga, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    T gi = g[i];
    if constexpr (WD) gi = gi + k.wd * p[i];
    const T si = sq[i] * k.alpha + k.w * gi * gi;
    sq[i] = si;
    T avg;
    if constexpr (CENTERED) {
      T ai;
      if constexpr (SMALL) ai = ga[i] + k.w * (gi - ga[i]);
      else ai = gi - (gi - ga[i]) * k.omw;
      ga[i] = ai;
      avg = std::sqrt(si - ai * ai);
    } else {
      avg = std::sqrt(si);
    }
    avg = avg + k.eps;
    if constexpr (MOM) {
      const T b = buf[i] * k.mom + gi / avg;
      buf[i] = b;
      p[i] = p[i] + (-k.lr) * b;
    } else {
      p[i] = p[i] + (-k.lr) * gi / avg;
    }
  }
}

struct RMSpropRule {
  static constexpr int kWork = 4;
  static int num_slots(const OptConfig& c) { return 1 + (c.momentum > 0) + (c.centered ? 1 : 0); }
  static const char* slot_name(const OptConfig& c, int k) {
    if (k == 0) return "square_avg";
    if (k == 1 && c.momentum > 0) return "momentum_buffer";
    return "grad_avg";
  }
  static double slot_init(const OptConfig&, int) { return 0.0; }
  static bool slot_nonneg(const OptConfig&, int k) { return k == 0; }
  static void validate(const OptConfig& c) {
    check_nonneg("lr", c.lr);
    check_nonneg("alpha", c.alpha);
    check_nonneg("eps", c.eps);
    check_nonneg("weight_decay", c.weight_decay);
    check_nonneg("momentum", c.momentum);
  }
  template <class T>
  static void range(const OptConfig& c, T* p, const T* g, T* const* s, int64_t lo, int64_t hi, int64_t) {
    const T w = T(1.0 - c.alpha);
    const RmsConst<T> k{T(c.lr), T(c.weight_decay), T(c.alpha), w, T(1) - w, T(c.eps), T(c.momentum)};
    const bool mom = c.momentum > 0;
    T* sq = s[0];
    T* buf = mom ? s[1] : nullptr;
    T* ga = c.centered ? s[mom ? 2 : 1] : nullptr;
    const bool small = std::abs(w) < T(0.5);
    auto go = [&](auto WDC, auto CC, auto SC, auto MC) {
      rmsprop_range<decltype(WDC)::value, decltype(CC)::value, decltype(SC)::value, decltype(MC)::value>(
          k, p, g, sq, buf, ga, lo, hi);
    };
    auto by_mom = [&](auto WDC, auto CC, auto SC) {
      if (mom) go(WDC, CC, SC, std::true_type{});
      else go(WDC, CC, SC, std::false_type{});
    };
    auto by_centered = [&](auto WDC) {
      if (!c.centered) by_mom(WDC, std::false_type{}, std::true_type{});
      else if (small) by_mom(WDC, std::true_type{}, std::true_type{});
      else by_mom(WDC, std::true_type{}, std::false_type{});
    };
    if (c.weight_decay != 0) by_centered(std::true_type{});
    else by_centered(std::false_type{});
  }
};
