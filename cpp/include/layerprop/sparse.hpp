// Sparse input rows (CSR) through a Linear layer: the forward product and the weight gradient,
// without densifying the rows. A TF-IDF or one-hot batch of 20,000 features at 1% density has
// ~200 non-zeros per row: the products cost nnz x OUT instead of N x IN x OUT.
//
// CSR rows: row r holds the entries p in [ptr[r], ptr[r+1]) with column idx[p] and value
// val[p]. The kernels trust their arguments: the model stages a batch (copies and checks
// every index) before they run. Duplicate columns in a row add up, as in SciPy.
//
// Every output element sums its terms in one fixed order (a row's entries in storage order;
// a weight gradient's rows in ascending order), whichever path and thread count runs, so
// results never depend on the thread count.
#pragma once
#include <cstdint>

#include "layerprop/common.hpp"
#include "layerprop/gemm.hpp"

namespace lp::kern {

// Scratch of the sparse kernels, owned by the caller and grown on demand (never per step once
// the largest batch has been seen).
template <class T>
struct SparseScratch {
  Buffer<T> wt;                 // forward: the weight transposed, (IN, OUT)
  Buffer<T> tiles;              // weight gradient: one (kColBlock, OUT) tile per thread
  std::vector<int64_t> count;   // weight gradient: entries per column block (+1)
  std::vector<int64_t> entry;   // weight gradient: entry positions, bucketed by column block
  std::vector<int64_t> row;     // ... and their rows
};
// Columns per weight-gradient tile.
constexpr int64_t kColBlock = 64;

// y (N,OUT) = X (N,IN; CSR) . W (OUT,IN)^T, then the epilogue (bias, activation) if given.
template <class T>
void csr_linear_forward(T* y, int64_t ldy, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                        const T* W, int64_t OUT, int64_t IN, const Epilogue<T>* ep, SparseScratch<T>& s);

// dW (OUT,IN) = dZ (N,OUT)^T . X (N,IN; CSR), or dW += that when accumulating.
template <class T>
void csr_weight_grad(T* dW, const T* dZ, int64_t ldz, const int64_t* ptr, const int64_t* idx, const T* val,
                     int64_t N, int64_t OUT, int64_t IN, bool accumulate, SparseScratch<T>& s);

// Straightforward loops over the same entries: the twins the tests compare the kernels with.
template <class T>
void csr_linear_forward_naive(T* y, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N, const T* W,
                              int64_t OUT, int64_t IN);
template <class T>
void csr_weight_grad_naive(T* dW, const T* dZ, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                           int64_t OUT, int64_t IN, bool accumulate);

// True when the forward product transposes W first (many entries) rather than gathering
// columns of W entry by entry (few entries: a single row at inference).
inline bool csr_forward_transposes(int64_t nnz, int64_t IN) { return nnz * 4 >= IN; }

}  // namespace lp::kern
