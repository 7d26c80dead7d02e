// Losses fused with their gradient: one pass gives the mean loss and d loss / d output.
// Per-row losses go to `row_loss` (N) and are summed serially in row order, so the value
// does not depend on the thread count. `grad` may be null (loss only). `w` (N, or null) weights
// the rows: the loss is sum_i w_i l_i / sum_i w_i (scikit-learn's sample_weight; PyTorch's
// (w * loss(reduction="none")).sum() / w.sum()), and so is the gradient.
#pragma once
#include <cstdint>

#include "layerprop/common.hpp"

namespace lp::kern {

// out (N,D) = softmax of each row of z (N,D): exp(z - row max) / row sum, summed in column
// order (out may be z). LocoProp's targets and local residuals of a softmax output.
template <class T>
void softmax_rows(T* out, const T* z, int64_t N, int64_t D);

// logits (N,C), labels (N) in [0,C) -> mean cross-entropy of softmax; grad (N,C).
template <class T>
double cross_entropy(T* grad, T* row_loss, const T* logits, const int64_t* labels, const T* w,
                     int64_t N, int64_t C);
// pred (N,D), target (N,D) -> mean over all N*D elements of (pred-target)^2; grad (N,D).
template <class T>
double mse(T* grad, T* row_loss, const T* pred, const T* target, const T* w, int64_t N, int64_t D);
// logits (N,D), target (N,D) in [0,1] -> mean binary cross-entropy of sigmoid(logits).
template <class T>
double bce_with_logits(T* grad, T* row_loss, const T* logits, const T* target, const T* w, int64_t N,
                       int64_t D);

// logits (N,D) = log of the predicted rates, target (N,D) >= 0 -> mean over all N*D elements
// of exp(z) - t z (PyTorch's PoissonNLLLoss(log_input=True)); grad (exp(z) - t) / (N D).
template <class T>
double poisson_nll(T* grad, T* row_loss, const T* logits, const T* target, const T* w, int64_t N,
                   int64_t D);

// Number (w: total weight) of rows whose argmax (first maximum) equals the label.
template <class T>
double count_correct(const T* logits, const int64_t* labels, const T* w, int64_t N, int64_t C);

}  // namespace lp::kern
