// Sigmoid: 1 / (1 + exp(-x)); f'(x) = y (1 - y).
template <class T>
struct SigmoidF {
  explicit SigmoidF(const ActParams<T>&) {}
  T f(T x) const { return T(1) / (T(1) + std::exp(-x)); }
  T df(T, T y) const { return y * (T(1) - y); }
};
