// Templates compiled twice: once portable (gemm.cpp), once with AVX2+FMA (gemm_avx2.cpp).
// Included inside a namespace by each translation unit.
// Blocking (BLIS scheme): B panel KC x NC (L3), A block MC x KC (L2), micro-panels MR x KC
// and KC x NR (L1), MR x NR accumulators in registers.
// Needs <algorithm> and <cstdint>, included by the including file before its namespace.

template <class T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int64_t MR = 6, NR = 16, KC = 256, MC = 168, NC = 4080;
};
template <>
struct Blocking<double> {
  static constexpr int64_t MR = 6, NR = 8, KC = 256, MC = 72, NC = 4080;
};

// Portable micro-kernel: c (MR x NR, ldc) (+)= a_panel (KC x MR) . b_panel (KC x NR).
template <class T>
inline void ukernel_generic(int64_t kc, const T* __restrict a, const T* __restrict b,
                            T* __restrict c, int64_t ldc, bool accumulate) {
  constexpr int64_t MR = Blocking<T>::MR, NR = Blocking<T>::NR;
  T acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const T* ak = a + k * MR;
    const T* bk = b + k * NR;
    for (int64_t r = 0; r < MR; ++r)
      for (int64_t j = 0; j < NR; ++j) acc[r][j] += ak[r] * bk[j];
  }
  for (int64_t r = 0; r < MR; ++r)
    for (int64_t j = 0; j < NR; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
}

// Direct path for small products: no packing, loops ordered for contiguous inner access.
// Each output's sum over k runs in one fixed order (serial), so results never depend on threads.
template <class T>
inline void gemm_small(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* __restrict A,
                       int64_t lda, const T* __restrict B, int64_t ldb, T* __restrict C,
                       int64_t ldc, bool accumulate) {
  if (!ta && tb) {  // C[i,j] = dot(A row i, B row j): 8 fixed partial sums
    for (int64_t i = 0; i < M; ++i) {
      const T* a = A + i * lda;
      for (int64_t j = 0; j < N; ++j) {
        const T* b = B + j * ldb;
        T s[8] = {};
        int64_t k = 0;
        for (; k + 8 <= K; k += 8)
          for (int l = 0; l < 8; ++l) s[l] += a[k + l] * b[k + l];
        T t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (; k < K; ++k) t += a[k] * b[k];
        C[i * ldc + j] = accumulate ? C[i * ldc + j] + t : t;
      }
    }
  } else if (!ta && !tb) {  // row i of C = sum_k A[i,k] * row k of B
    for (int64_t i = 0; i < M; ++i) {
      T* c = C + i * ldc;
      if (!accumulate) std::fill(c, c + N, T(0));
      for (int64_t k = 0; k < K; ++k) {
        const T aik = A[i * lda + k];
        const T* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += aik * b[j];
      }
    }
  } else if (ta && !tb) {  // C[i,:] += A[k,i] * B[k,:]
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    for (int64_t k = 0; k < K; ++k) {
      const T* b = B + k * ldb;
      for (int64_t i = 0; i < M; ++i) {
        const T aki = A[k * lda + i];
        T* c = C + i * ldc;
        for (int64_t j = 0; j < N; ++j) c[j] += aki * b[j];
      }
    }
  } else {  // both transposed: rare, plain loops
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        T t = 0;
        for (int64_t k = 0; k < K; ++k) t += A[k * lda + i] * B[j * ldb + k];
        C[i * ldc + j] = accumulate ? C[i * ldc + j] + t : t;
      }
  }
}
