// Losses fused with their gradient: one pass gives the mean loss and d loss / d output.
// Per-row losses go to `row_loss` (N) and are summed serially in row order, so the value
// does not depend on the thread count. `grad` may be null (loss only).
#pragma once
#include <cstdint>

#include "layerprop/common.hpp"

namespace lp::kern {

// logits (N,C), labels (N) in [0,C) -> mean cross-entropy of softmax; grad (N,C).
template <class T>
double cross_entropy(T* grad, T* row_loss, const T* logits, const int64_t* labels, int64_t N,
                     int64_t C);
// pred (N,D), target (N,D) -> mean over all N*D elements of (pred-target)^2; grad (N,D).
template <class T>
double mse(T* grad, T* row_loss, const T* pred, const T* target, int64_t N, int64_t D);
// logits (N,D), target (N,D) in [0,1] -> mean binary cross-entropy of sigmoid(logits).
template <class T>
double bce_with_logits(T* grad, T* row_loss, const T* logits, const T* target, int64_t N,
                       int64_t D);

// Number of rows whose argmax (first maximum) equals the label.
template <class T>
int64_t count_correct(const T* logits, const int64_t* labels, int64_t N, int64_t C);

}  // namespace lp::kern
