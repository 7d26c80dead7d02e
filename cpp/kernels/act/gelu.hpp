// GELU, the exact form: x * Phi(x) (PyTorch's approximate='none').
template <class T>
struct GeluF {
  explicit GeluF(const ActParams<T>&) {}
  T f(T x) const { return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440))); }
  T df(T x, T) const {
    T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
    T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  }
};
