// Softplus(beta, threshold): log(1 + exp(beta x)) / beta, and x where beta x > threshold (as
// PyTorch); f' = z / (z + 1) with z = exp(beta x), and 1 above the threshold.
template <class T>
struct SoftplusF {
  T beta, threshold;
  explicit SoftplusF(const ActParams<T>& p) : beta(p.beta), threshold(p.threshold) {}
  T f(T x) const { return x * beta > threshold ? x : std::log1p(std::exp(x * beta)) / beta; }
  T df(T x, T) const {
    const T z = std::exp(x * beta);
    return x * beta > threshold ? T(1) : z / (z + T(1));
  }
};
