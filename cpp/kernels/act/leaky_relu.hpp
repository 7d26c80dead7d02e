// LeakyReLU(negative_slope): x if x > 0 else negative_slope * x.
template <class T>
struct LeakyReluF {
  T s;
  explicit LeakyReluF(const ActParams<T>& p) : s(p.negative_slope) {}
  T f(T x) const { return x > T(0) ? x : x * s; }
  T df(T x, T) const { return x > T(0) ? T(1) : s; }
};
