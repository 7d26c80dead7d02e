// The optimizer part: its configuration, its named state slots (one flat buffer per slot,
// laid out like the parameter store), per-tensor step counts, and step(tensor, lr). The
// update rules are the kernels of cpp/kernels/optim/.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layerprop/common.hpp"
#include "layerprop/optim.hpp"

namespace lp {

// One tensor of the parameter store as the optimizer sees it: its place and size.
struct OptTensor {
  int64_t offset = 0, size = 0;
};

template <class T>
class Optimizer {
 public:
  Optimizer() : slots_(kern::kMaxStateSlots), backup_(kern::kMaxStateSlots) {}
  // Validates cfg (ValueError naming the setting), then sizes every slot for `n_params`
  // elements at the rule's start value and resets the step counts of `n_tensors` tensors.
  void configure(const kern::OptConfig& cfg, int64_t n_params, size_t n_tensors);
  const kern::OptConfig& config() const { return cfg_; }
  int num_slots() const { return static_cast<int>(names_.size()); }
  const std::vector<std::string>& slot_names() const { return names_; }
  // Index of the slot called `name`, or -1.
  int slot_index(const std::string& name) const;
  bool slot_nonneg(int k) const { return kern::optimizer_slot_nonneg(cfg_, k); }
  // Slot k in [0, kMaxStateSlots): empty when the optimizer keeps fewer.
  Buffer<T>& slot(int k) { return slots_[static_cast<size_t>(k)]; }
  std::vector<int64_t>& steps() { return steps_; }
  void resize_steps(size_t n_tensors) { steps_.assign(n_tensors, 0); }

  // One step on tensor t (its step count goes up by one) at learning rate lr (negative: the
  // configured one), with params/grads the parameter store's base pointers. extra_decay is
  // added to the configured weight_decay for this step (scikit-learn's alpha on weights).
  void step(int t, const OptTensor& where, T* params, const T* grads, double lr = -1.0, double extra_decay = 0);

  // Everything a step changes is copied aside / put back (the guarded steps).
  void backup();
  void restore();

 private:
  kern::OptConfig cfg_;
  std::vector<std::string> names_;
  std::vector<Buffer<T>> slots_;  // kMaxStateSlots buffers, the first num_slots() in use
  std::vector<Buffer<T>> backup_;
  std::vector<int64_t> steps_, steps_backup_;
};

}  // namespace lp
