// Optimizers as one fused in-place pass over param, grad and state, with PyTorch's update
// rules (single-tensor CPU path) written out in the same operation order.
#pragma once
#include <cstdint>

namespace lp::kern {

enum class OptKind : int { None = 0, SGD, Adam, AdamW };

struct OptConfig {
  OptKind kind = OptKind::None;
  double lr = 0.01;
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // state buffers per parameter element: SGD with momentum 1, Adam/AdamW 2, else 0
  int state_slots() const {
    if (kind == OptKind::SGD) return momentum != 0 ? 1 : 0;
    if (kind == OptKind::Adam || kind == OptKind::AdamW) return 2;
    return 0;
  }
};

// One step on n elements. `step` is this tensor's step number, starting at 1.
// s1/s2: optimizer state (momentum buffer; Adam's exp_avg and exp_avg_sq).
template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* s1, T* s2, int64_t n,
                    int64_t step);

}  // namespace lp::kern
