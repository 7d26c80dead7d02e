// C (M,N) = op(A) (M,K) . op(B) (K,N)  [+ C if accumulate], row-major, then an optional
// epilogue on the final values: C += bias (N); act_out = f(C).
// op(A)[i,k] = trans_a ? A[k*lda+i] : A[i*lda+k];  op(B)[k,j] = trans_b ? B[j*ldb+k] : B[k*ldb+j].
// The three shapes of a Linear layer:
//   forward  y (N,OUT) = x (N,IN) . w (OUT,IN)^T      -> gemm(false, true, ...)
//   input    dx (N,IN) = dz (N,OUT) . w (OUT,IN)      -> gemm(false, false, ...)
//   weight   dw (OUT,IN) = dz (N,OUT)^T . x (N,IN)    -> gemm(true, false, ...)
// Results are bitwise identical for any thread count: work is split by output tile and the
// reduction over K always runs in the same blocks and order.
#pragma once
#include <cstdint>

#include "layerprop/common.hpp"
#include "layerprop/eltwise.hpp"

namespace lp::kern {

template <class T>
struct Epilogue {
  const T* bias = nullptr;  // (N) added to every row, or null
  Act act = Act::Identity;
  ActParams<T> params;      // the activation's settings
  T* act_out = nullptr;     // if set: act_out[i*ld_act+j] = f(C[i,j]) after the bias
  int64_t ld_act = 0;
};

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate,
          const Epilogue<T>* ep = nullptr);

// x @ W^T with op(B) = W^T packed once, for repeated products with the same W (a model's
// inference, Model::predict). The panels are the ones gemm packs on every call: same bits.
template <class T>
struct PackedNT {
  int64_t N = 0, K = 0, n_pad = 0;  // W is N x K; panels padded to n_pad columns
  Buffer<T> data;                   // depth block by depth block, panel by panel
};
// Whether a PackedNT of W serves x @ W^T of this shape (gemm_nt_packed): wherever gemm would
// pack op(B) on every call, and with the AVX-512 row kernels wherever it is not direct.
template <class T>
bool nt_packs_b(int64_t M, int64_t N, int64_t K);
template <class T>
void pack_nt(PackedNT<T>& p, const T* W, int64_t ldw, int64_t N, int64_t K);
// gemm(false, true, M, B.N, B.K, A, lda, W, ldw, C, ldc, accumulate, ep) for the W B was
// packed from; only for shapes where nt_packs_b(M, B.N, B.K).
template <class T>
void gemm_nt_packed(int64_t M, const T* A, int64_t lda, const PackedNT<T>& B, T* C, int64_t ldc, bool accumulate,
                    const Epilogue<T>* ep = nullptr);
// Straightforward triple loop: the twin the tests compare the fast path with.
template <class T>
void gemm_naive(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate,
                const Epilogue<T>* ep = nullptr);

// C (M x N) (+)= A^T B with A (K x M, lda == M) and B (K x N) row-major, and colsum[i] (+)= the
// sum over k of A[k][i] (a Linear's weight and bias gradients from dz): the bits of gemm and
// colsum, in one pass over A where the product runs in place.
template <class T>
void gemm_tn_colsum(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                    int64_t ldc, bool accumulate, T* colsum, bool colsum_acc);

// Which path gemm takes for a shape ("direct" or "packed"); for tests and benchmarks.
bool gemm_uses_direct(int64_t M, int64_t N, int64_t K);
// Whether small products with B not transposed may read their operands in place instead of
// packing them (gemm.cpp; on by default, LAYERPROP_GEMM_INPLACE=0 turns it off). Same bits.
void set_gemm_inplace(bool on);
// Whether packed products with A not transposed keep A's 12-row tiles outside, read in place,
// with B's panels streaming past (gemm.cpp; on by default where the AVX-512 kernels run and
// A's rows spread over L1, LAYERPROP_GEMM_A_OUTER=0 turns it off). Same bits.
void set_gemm_a_outer(bool on);
// Whether the rectangles of a multi-threaded product share packed panels (gemm.cpp,
// SharedPanels): 1 (default), 0 (LAYERPROP_GEMM_SHARED=0) or 2 (tests: private copies). Same bits.
void set_gemm_shared(int mode);
// Whether a packed x @ W^T (M x N, depth K) runs as C^T = W x^T, W read in place.
bool swap_nt(int64_t M, int64_t N, int64_t K);

}  // namespace lp::kern
