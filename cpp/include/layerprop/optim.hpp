// Optimizers as one fused in-place pass over param, grad and state, with PyTorch's update
// rules (single-tensor CPU path) written out in the same operation order. Each rule is one
// file under cpp/kernels/optim/, registered by one line in LAYERPROP_OPTIMIZERS below.
#pragma once
#include <cstdint>

// X(kind, rule file stem, rule struct): the optimizer table. Codes follow the order (None = 0).
#define LAYERPROP_OPTIMIZERS(X)      \
  X(SGD, sgd, SgdRule)               \
  X(Adam, adam, AdamRule)            \
  X(AdamW, adam, AdamRule)           \
  X(RMSprop, rmsprop, RMSpropRule)   \
  X(Adagrad, adagrad, AdagradRule)

namespace lp::kern {

#define LAYERPROP_OPT_ENUM(kind, file, rule) kind,
enum class OptKind : int { None = 0, LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_ENUM) Count };
#undef LAYERPROP_OPT_ENUM

// Every optimizer's settings by name; each rule reads the ones it knows.
struct OptConfig {
  OptKind kind = OptKind::None;
  double lr = 0.01;
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double alpha = 0.99;          // RMSprop smoothing constant
  bool centered = false;        // RMSprop: normalize by the estimated variance
  double lr_decay = 0;          // Adagrad
  double initial_accumulator_value = 0;  // Adagrad
};

// The most state slots a rule keeps per parameter element (RMSprop centered with momentum).
constexpr int kMaxStateSlots = 3;

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

// One step on n elements. `step` is this tensor's step number, starting at 1. `slots` holds
// the rule's state slots for these elements, in the order of optimizer_slot_names(cfg).
template <class T>
void optimizer_step(const OptConfig& cfg, T* p, const T* g, T* const* slots, int64_t n, int64_t step);

// The rule's named state slots for this configuration (e.g. Adam: exp_avg, exp_avg_sq), the
// value each starts at, and whether its values are never negative (second moments).
int optimizer_num_slots(const OptConfig& cfg);
const char* optimizer_slot_name(const OptConfig& cfg, int k);
double optimizer_slot_init(const OptConfig& cfg, int k);
bool optimizer_slot_nonneg(const OptConfig& cfg, int k);
// ValueError naming the argument when a setting is out of range (negative lr, alpha, ...).
void validate_optimizer(const OptConfig& cfg);

}  // namespace lp::kern
