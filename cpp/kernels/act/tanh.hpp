// Tanh: tanh(x); f'(x) = 1 - y^2.
template <class T>
struct TanhF {
  explicit TanhF(const ActParams<T>&) {}
  T f(T x) const { return std::tanh(x); }
  T df(T, T y) const { return T(1) - y * y; }
};
