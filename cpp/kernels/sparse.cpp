// Sparse (CSR) rows through a Linear layer: forward product and weight gradient
// (layerprop/sparse.hpp).
#include "layerprop/sparse.hpp"

#include <algorithm>
#include <cstring>

#include "layerprop/eltwise.hpp"
#include "layerprop/runtime.hpp"
#ifdef LAYERPROP_HAVE_OPENMP
#include <omp.h>
#endif

namespace lp::kern {
namespace {

template <class V>
void grow(V& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// y[o] += a * x[o], o < n: one multiply and one add per element (no contraction), so every
// path sums the same way.
template <class T>
inline void axpy(T* __restrict y, T a, const T* __restrict x, int64_t n) {
  for (int64_t o = 0; o < n; ++o) y[o] += a * x[o];
}

// body(b) for b in [0, n), on `nt` threads taking items dynamically; `tid` picks the thread's
// scratch. The result of each item never depends on which thread computes it.
template <class F>
void parallel_items(int64_t n, int nt, F&& body) {
#ifdef LAYERPROP_HAVE_OPENMP
  if (nt > 1 && n > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t b = 0; b < n; ++b) body(b, omp_get_thread_num());
    return;
  }
#endif
  for (int64_t b = 0; b < n; ++b) body(b, 0);
}

}  // namespace

template <class T>
void csr_linear_forward(T* y, int64_t ldy, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                        const T* W, int64_t OUT, int64_t IN, const Epilogue<T>* ep, SparseScratch<T>& s) {
  const int64_t nnz = ptr[N] - ptr[0];
  if (csr_forward_transposes(nnz, IN)) {
    // W (OUT,IN) -> wt (IN,OUT) in 32 x 32 tiles, then each row adds the rows of wt its entries
    // name: contiguous, vectorizable, and every row independent.
    grow(s.wt, checked_mul(IN, OUT, "sparse input: the first layer's weight"));
    T* wt = s.wt.data();
    constexpr int64_t B = 32;
    const int64_t nblk = (IN + B - 1) / B;
    parallel_items(nblk, threads_for(IN * OUT, int64_t(1) << 17), [&](int64_t b, int) {
      const int64_t c0 = b * B, c1 = std::min(IN, c0 + B);
      for (int64_t o0 = 0; o0 < OUT; o0 += B) {
        const int64_t o1 = std::min(OUT, o0 + B);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t o = o0; o < o1; ++o) wt[c * OUT + o] = W[o * IN + c];
      }
    });
    parallel_range(N, nnz * OUT, int64_t(1) << 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        T* yr = y + r * ldy;
        std::fill(yr, yr + OUT, T(0));
        for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) axpy(yr, val[p], wt + idx[p] * OUT, OUT);
      }
    });
  } else {
    // Few entries: gather the columns of W they name, summing in the same order.
    for (int64_t r = 0; r < N; ++r)
      for (int64_t o = 0; o < OUT; ++o) {
        const T* wo = W + o * IN;
        T acc = T(0);
        for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) acc += val[p] * wo[idx[p]];
        y[r * ldy + o] = acc;
      }
  }
  if (ep && (ep->bias || ep->act_out)) {
    const int64_t cost = act_is_cheap(ep->act) ? 1 : 16;
    parallel_range(N, N * OUT * cost, int64_t(1) << 18, [&](int64_t r0, int64_t r1) {
      bias_act<T>(y + r0 * ldy, ldy, r1 - r0, OUT, ep->bias, ep->act, ep->slope,
                  ep->act_out ? ep->act_out + r0 * ep->ld_act : nullptr, ep->ld_act);
    });
  }
}

template <class T>
void csr_weight_grad(T* dW, const T* dZ, int64_t ldz, const int64_t* ptr, const int64_t* idx, const T* val,
                     int64_t N, int64_t OUT, int64_t IN, bool accumulate, SparseScratch<T>& s) {
  // Bucket the entries by column block, keeping row order inside each bucket (a counting sort);
  // then each block of kColBlock columns of dW is summed in a small transposed tile and written
  // once. Blocks are independent: threads take them in any order.
  const int64_t nnz = ptr[N] - ptr[0];
  const int64_t nblk = (IN + kColBlock - 1) / kColBlock;
  s.count.assign(static_cast<size_t>(nblk + 1), 0);
  grow(s.entry, nnz);
  grow(s.row, nnz);
  int64_t* cnt = s.count.data();
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) ++cnt[idx[p] / kColBlock + 1];
  for (int64_t b = 0; b < nblk; ++b) cnt[b + 1] += cnt[b];
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p) {
      const int64_t q = cnt[idx[p] / kColBlock]++;
      s.entry[q] = p;
      s.row[q] = r;
    }
  for (int64_t b = nblk; b > 0; --b) cnt[b] = cnt[b - 1];  // back to bucket starts
  cnt[0] = 0;

  const int nt = threads_for(nnz * OUT + IN * OUT, int64_t(1) << 17);
  const int64_t tile = kColBlock * OUT;
  grow(s.tiles, checked_mul(tile, std::max(nt, 1), "sparse input: weight-gradient tiles"));
  parallel_items(nblk, nt, [&](int64_t b, int tid) {
    T* t = s.tiles.data() + tid * tile;
    const int64_t c0 = b * kColBlock, cw = std::min(kColBlock, IN - c0);
    std::fill(t, t + cw * OUT, T(0));
    for (int64_t q = cnt[b]; q < cnt[b + 1]; ++q) {
      const int64_t p = s.entry[q];
      axpy(t + (idx[p] - c0) * OUT, val[p], dZ + s.row[q] * ldz, OUT);
    }
    for (int64_t o = 0; o < OUT; ++o) {
      T* d = dW + o * IN + c0;
      if (accumulate)
        for (int64_t j = 0; j < cw; ++j) d[j] = d[j] + t[j * OUT + o];
      else
        for (int64_t j = 0; j < cw; ++j) d[j] = t[j * OUT + o];
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
  std::vector<T> g(static_cast<size_t>(OUT * IN), T(0));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = ptr[r]; p < ptr[r + 1]; ++p)
      for (int64_t o = 0; o < OUT; ++o) g[o * IN + idx[p]] += val[p] * dZ[r * OUT + o];
  for (int64_t q = 0; q < OUT * IN; ++q) dW[q] = accumulate ? dW[q] + g[q] : g[q];
}

#define LP_SPARSE_INSTANTIATE(T)                                                                               \
  template void csr_linear_forward<T>(T*, int64_t, const int64_t*, const int64_t*, const T*, int64_t, const T*, \
                                      int64_t, int64_t, const Epilogue<T>*, SparseScratch<T>&);                 \
  template void csr_weight_grad<T>(T*, const T*, int64_t, const int64_t*, const int64_t*, const T*, int64_t,    \
                                   int64_t, int64_t, bool, SparseScratch<T>&);                                  \
  template void csr_linear_forward_naive<T>(T*, const int64_t*, const int64_t*, const T*, int64_t, const T*,    \
                                            int64_t, int64_t);                                                  \
  template void csr_weight_grad_naive<T>(T*, const T*, const int64_t*, const int64_t*, const T*, int64_t,       \
                                         int64_t, int64_t, bool);
LP_SPARSE_INSTANTIATE(float)
LP_SPARSE_INSTANTIATE(double)
#undef LP_SPARSE_INSTANTIATE

}  // namespace lp::kern
