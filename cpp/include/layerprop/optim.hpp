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

// Gradient clipping before the update (PyTorch's rules): by value, every element clamped to
// [-max_value, max_value] (clamp_); then by global norm, every element scaled by
// min(1, max_norm / (total + 1e-6)) where total is the 2-norm of all n gradients
// (clip_grad_norm_). 0 turns either off.
struct ClipConfig {
  double max_norm = 0, max_value = 0;
  bool active() const { return max_norm > 0 || max_value > 0; }
};

// Clips g (n) in place; returns the 2-norm of g after value clipping and before norm clipping
// (summed in double, in a fixed order: the same for any thread count).
template <class T>
double clip_gradients(const ClipConfig& clip, T* g, int64_t n);

// One step on n elements. `step` is this tensor's step number, starting at 1.
// s1/s2: optimizer state (momentum buffer; Adam's exp_avg and exp_avg_sq).
template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* s1, T* s2, int64_t n,
                    int64_t step);

}  // namespace lp::kern
