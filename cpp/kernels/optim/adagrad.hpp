// Adagrad (torch.optim.Adagrad, single-tensor path, same operation order):
//   g += weight_decay * p;  clr = lr / (1 + (step - 1) * lr_decay)
//   sum += g * g;  p += -clr * g / (sqrt(sum) + eps)
// State: sum, starting at initial_accumulator_value.
template <class T>
struct AdagradConst {
  T nclr, wd, eps;
};

template <bool WD, class T>
void adagrad_range(const AdagradConst<T> k, T* __restrict p, const T* __restrict g, T* __restrict sum,
                   int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    T gi = g[i];
    if constexpr (WD) gi = gi + k.wd * p[i];
    const T si = sum[i] + gi * gi;
    sum[i] = si;
    const T std_ = std::sqrt(si) + k.eps;
    p[i] = p[i] + k.nclr * gi / std_;
  }
}

struct AdagradRule {
  static constexpr int kWork = 4;
  static int num_slots(const OptConfig&) { return 1; }
  static const char* slot_name(const OptConfig&, int) { return "sum"; }
  static double slot_init(const OptConfig& c, int) { return c.initial_accumulator_value; }
  static bool slot_nonneg(const OptConfig&, int) { return true; }
  static void validate(const OptConfig& c) {
    check_nonneg("lr", c.lr);
    check_nonneg("lr_decay", c.lr_decay);
    check_nonneg("weight_decay", c.weight_decay);
    check_nonneg("initial_accumulator_value", c.initial_accumulator_value);
    check_nonneg("eps", c.eps);
  }
  template <class T>
  static void range(const OptConfig& c, T* p, const T* g, T* const* s, int64_t lo, int64_t hi, int64_t step) {
    const double clr = c.lr / (1 + (double(step) - 1) * c.lr_decay);
    const AdagradConst<T> k{T(-clr), T(c.weight_decay), T(c.eps)};
    if (c.weight_decay != 0) adagrad_range<true>(k, p, g, s[0], lo, hi);
    else adagrad_range<false>(k, p, g, s[0], lo, hi);
  }
};
