// SiLU (swish): x * sigmoid(x), written as PyTorch's kernels do: f = x / (1 + exp(-x));
// f' = s * (1 + x * (1 - s)) with s = 1 / (1 + exp(-x)).
template <class T>
struct SiluF {
  explicit SiluF(const ActParams<T>&) {}
  T f(T x) const { return x / (T(1) + std::exp(-x)); }
  T df(T x, T) const {
    const T s = T(1) / (T(1) + std::exp(-x));
    return s * (T(1) + x * (T(1) - s));
  }
};
