// Identity: f(x) = x.
template <class T>
struct IdentityF {
  explicit IdentityF(const ActParams<T>&) {}
  T f(T x) const { return x; }
  T df(T, T) const { return T(1); }
};
