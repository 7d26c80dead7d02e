// Sparse input rows (CSR) through a Linear layer: the forward product and the weight gradient,
// without densifying the rows. A TF-IDF or one-hot batch of 20,000 features at 1% density has
// ~200 non-zeros per row: the products cost nnz x OUT instead of N x IN x OUT.
//
// CSR rows: row r holds the entries p in [ptr[r], ptr[r+1]) with column idx[p] and value
// val[p]. The kernels trust their arguments: the model stages a batch (copies and checks
// every index) before they run. Duplicate columns in a row add up, as in SciPy.
//
// Every output element sums its terms in one fixed order (a row's entries in storage order;
// a weight gradient's rows in ascending order) whatever the thread count: threads split the
// outputs, never a sum. No scratch memory: a block of rows of W (or dW) stays in cache while
// the batch's entries gather from it (or add into it).
#pragma once
#include <cstdint>

#include "layerprop/common.hpp"
#include "layerprop/gemm.hpp"

namespace lp::kern {

// y (N,OUT) = X (N,IN; CSR) . W (OUT,IN)^T, then the epilogue (bias, activation) if given.
template <class T>
void csr_linear_forward(T* y, int64_t ldy, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                        const T* W, int64_t OUT, int64_t IN, const Epilogue<T>* ep);

// The same product from Wt (IN,OUT) = W^T, made once by transpose(): each entry adds a
// contiguous row of Wt. For inference over many rows (the weights do not change between
// batches). Same bits as csr_linear_forward.
template <class T>
void transpose(T* wt, const T* W, int64_t OUT, int64_t IN);
template <class T>
void csr_linear_forward_t(T* y, int64_t ldy, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                          const T* Wt, int64_t OUT, const Epilogue<T>* ep);

// dW (OUT,IN) = dZ (N,OUT)^T . X (N,IN; CSR); when accumulating, each term is added to dW.
template <class T>
void csr_weight_grad(T* dW, const T* dZ, int64_t ldz, const int64_t* ptr, const int64_t* idx, const T* val,
                     int64_t N, int64_t OUT, int64_t IN, bool accumulate);

// Straightforward loops over the same entries: the twins the tests compare the kernels with.
template <class T>
void csr_linear_forward_naive(T* y, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N, const T* W,
                              int64_t OUT, int64_t IN);
template <class T>
void csr_weight_grad_naive(T* dW, const T* dZ, const int64_t* ptr, const int64_t* idx, const T* val, int64_t N,
                           int64_t OUT, int64_t IN, bool accumulate);

}  // namespace lp::kern
