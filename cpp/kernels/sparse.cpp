// Sparse (CSR) rows through a Linear layer: forward product and weight gradient
// (layerprop/sparse.hpp).
#include "layerprop/sparse.hpp"

#include <algorithm>
#include <cstring>

#include "layerprop/eltwise.hpp"
#include "layerprop/runtime.hpp"

namespace lp::kern {

// Outputs per pass over the batch's entries: OB rows of W (or of dW) stay in the L2 cache while
// every entry of the batch gathers from (or adds into) them.
// Bias and activation on y (N,OUT), as the dense GEMM's store applies them.
template <class T>
void epilogue(T* y, int64_t ldy, int64_t N, int64_t OUT, const Epilogue<T>* ep) {
  if (!ep || !(ep->bias || ep->act_out)) return;
  const int64_t cost = act_is_cheap(ep->act) ? 1 : 16;
  parallel_range(N, Work::EltCheap, N * OUT * cost, [&](int64_t r0, int64_t r1) {
    bias_act<T>(y + r0 * ldy, ldy, r1 - r0, OUT, ep->bias, ep->act, ep->params,
                ep->act_out ? ep->act_out + r0 * ep->ld_act : nullptr, ep->ld_act);
  });
}

template <class T>
constexpr int64_t kOutBlock = sizeof(T) == 4 ? 8 : 4;

template <class T>
void csr_linear_forward(T* y, int64_t ldy, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                        const T* W, int64_t OUT, int64_t IN, const Epilogue<T>* ep) {
  // y[r, o] = sum over row r's entries, in storage order, of val * W[o, col].
  const int64_t nnz = ptr[N] - ptr[0];
  // Threads take blocks of outputs; each block reads its rows of W once and gathers from them.
  // (Transposing W for every training batch, so that each entry adds a contiguous row, measured
  // 2-4x slower; inference over many rows transposes once per call: csr_linear_forward_t.)
  constexpr int64_t OB = kOutBlock<T>;
  const int64_t nblk = (OUT + OB - 1) / OB;
  parallel_for(nblk, threads_for(Work::Sparse, nnz * OUT + IN * OUT / 4), [&](int64_t b) {
    const int64_t o0 = b * OB, ob = std::min(OB, OUT - o0);
    const T* w = W + o0 * IN;
    if (ob == OB) {
      for (int64_t r = 0; r < N; ++r) {
        T acc[OB] = {};
        for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) {
          const T v = val[p];
          const T* wc = w + idx[p];
          for (int64_t j = 0; j < OB; ++j) acc[j] += v * wc[j * IN];
        }
        for (int64_t j = 0; j < OB; ++j) y[r * ldy + o0 + j] = acc[j];
      }
    } else {
      for (int64_t j = 0; j < ob; ++j)
        for (int64_t r = 0; r < N; ++r) {
          T acc = T(0);
          for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) acc += val[p] * w[j * IN + idx[p]];
          y[r * ldy + o0 + j] = acc;
        }
    }
  });
  epilogue(y, ldy, N, OUT, ep);
}

template <class T>
void transpose(T* wt, const T* W, int64_t OUT, int64_t IN) {
  constexpr int64_t B = 32;
  parallel_for((IN + B - 1) / B, threads_for(Work::Sparse, IN * OUT), [&](int64_t b) {
    const int64_t c0 = b * B, c1 = std::min(IN, c0 + B);
    for (int64_t o0 = 0; o0 < OUT; o0 += B) {
      const int64_t o1 = std::min(OUT, o0 + B);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t o = o0; o < o1; ++o) wt[c * OUT + o] = W[o * IN + c];
    }
  });
}

template <class T>
void csr_linear_forward_t(T* y, int64_t ldy, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                          const T* Wt, int64_t OUT, const Epilogue<T>* ep) {
  const int64_t nnz = ptr[N] - ptr[0];
  parallel_range(N, Work::Sparse, nnz * OUT * 2, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict yr = y + r * ldy;
      std::fill(yr, yr + OUT, T(0));
      for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) {
        const T v = val[p];
        const T* __restrict wr = Wt + idx[p] * OUT;
        for (int64_t o = 0; o < OUT; ++o) yr[o] += v * wr[o];
      }
    }
  });
  epilogue(y, ldy, N, OUT, ep);
}

template <class T>
void csr_weight_grad(T* dW, const T* dZ, int64_t ldz, const int64_t* ptr, const int64_t* idx, const T* val,
                     int64_t N, int64_t OUT, int64_t IN, bool accumulate) {
  // dW[o, col] += val * dZ[r, o] for every entry, rows in ascending order. Threads take blocks
  // of rows of dW; each block is zeroed (unless accumulating) and then receives every entry.
  constexpr int64_t OB = kOutBlock<T>;
  const int64_t nnz = ptr[N] - ptr[0];
  const int64_t nblk = (OUT + OB - 1) / OB;
  parallel_for(nblk, threads_for(Work::Sparse, nnz * OUT + IN * OUT / 4), [&](int64_t b) {
    const int64_t o0 = b * OB, ob = std::min(OB, OUT - o0);
    T* d = dW + o0 * IN;
    if (!accumulate) std::fill(d, d + ob * IN, T(0));
    if (ob == OB) {
      for (int64_t r = 0; r < N; ++r) {
        T g[OB];
        for (int64_t j = 0; j < OB; ++j) g[j] = dZ[r * ldz + o0 + j];
        for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) {
          const T v = val[p];
          T* dc = d + idx[p];
          for (int64_t j = 0; j < OB; ++j) dc[j * IN] += v * g[j];
        }
      }
    } else {
      for (int64_t j = 0; j < ob; ++j)
        for (int64_t r = 0; r < N; ++r) {
          const T g = dZ[r * ldz + o0 + j];
          for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) d[j * IN + idx[p]] += val[p] * g;
        }
    }
  });
}

template <class T>
void csr_linear_forward_naive(T* y, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N, const T* W,
                              int64_t OUT, int64_t IN) {
  for (int64_t r = 0; r < N; ++r)
    for (int64_t o = 0; o < OUT; ++o) {
      T acc = T(0);
      for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) acc += val[p] * W[o * IN + idx[p]];
      y[r * OUT + o] = acc;
    }
}

template <class T>
void csr_weight_grad_naive(T* dW, const T* dZ, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                           int64_t OUT, int64_t IN, bool accumulate) {
  if (!accumulate) std::fill(dW, dW + OUT * IN, T(0));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p)
      for (int64_t o = 0; o < OUT; ++o) dW[o * IN + idx[p]] += val[p] * dZ[r * OUT + o];
}

#define LP_SPARSE_INSTANTIATE(T)                                                                               \
  template void csr_linear_forward<T>(T*, int64_t, const int64_t*, const int64_t*, const T*, int64_t, const T*, \
                                      int64_t, int64_t, const Epilogue<T>*);                 \
  template void transpose<T>(T*, const T*, int64_t, int64_t);                                             \
  template void csr_linear_forward_t<T>(T*, int64_t, const int64_t*, const int64_t*, const T*, int64_t, const T*, \
                                        int64_t, const Epilogue<T>*);                                           \
  template void csr_weight_grad<T>(T*, const T*, int64_t, const int64_t*, const int64_t*, const T*, int64_t,    \
                                   int64_t, int64_t, bool);                                  \
  template void csr_linear_forward_naive<T>(T*, const int64_t*, const int64_t*, const T*, int64_t, const T*,    \
                                            int64_t, int64_t);                                                  \
  template void csr_weight_grad_naive<T>(T*, const T*, const int64_t*, const int64_t*, const T*, int64_t,       \
                                         int64_t, int64_t, bool);
LP_SPARSE_INSTANTIATE(float)
LP_SPARSE_INSTANTIATE(double)
#undef LP_SPARSE_INSTANTIATE

}  // namespace lp::kern
