// ELU(alpha): x if x > 0 else alpha * (exp(x) - 1) (PyTorch: expm1); f' = 1 or alpha * exp(x).
template <class T>
struct EluF {
  T alpha;
  explicit EluF(const ActParams<T>& p) : alpha(p.alpha) {}
  T f(T x) const { return x <= T(0) ? std::expm1(x) * alpha : x; }
  T df(T x, T) const { return x <= T(0) ? alpha * std::exp(x) : T(1); }
};
