// ReLU: max(x, 0). NaN passes through, as in PyTorch (a NaN weight must not turn into a finite
// output); -0 stays -0. The derivative is 0 at NaN, as in PyTorch's threshold_backward.
template <class T>
struct ReluF {
  explicit ReluF(const ActParams<T>&) {}
  T f(T x) const { return x < T(0) ? T(0) : x; }
  T df(T x, T) const { return x > T(0) ? T(1) : T(0); }
};
