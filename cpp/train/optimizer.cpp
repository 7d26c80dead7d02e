#include "train/optimizer.hpp"

#include <algorithm>

namespace lp {

template <class T>
void Optimizer<T>::configure(const kern::OptConfig& cfg, int64_t n_params, size_t n_tensors) {
  kern::validate_optimizer(cfg);
  const int n = kern::optimizer_num_slots(cfg);
  if (n > 0) {
    const std::string what = "optimizer state";
    check_allocation(checked_mul(checked_mul(n_params, n, what), static_cast<int64_t>(sizeof(T)), what), what);
  }
  names_.clear();
  // assign() never gives back memory a slot once had, so a state view made before this
  // configuration still points into live memory (views are valid until the next compile).
  for (int k = 0; k < kern::kMaxStateSlots; ++k) {
    if (k < n) {
      names_.emplace_back(kern::optimizer_slot_name(cfg, k));
      slots_[k].assign(static_cast<size_t>(n_params), static_cast<T>(kern::optimizer_slot_init(cfg, k)));
    } else {
      slots_[k].assign(0, T(0));
    }
  }
  steps_.assign(n_tensors, 0);
  cfg_ = cfg;
}

template <class T>
int Optimizer<T>::slot_index(const std::string& name) const {
  for (size_t k = 0; k < names_.size(); ++k)
    if (names_[k] == name) return static_cast<int>(k);
  return -1;
}

template <class T>
void Optimizer<T>::step(int t, const OptTensor& where, T* params, const T* grads, double lr, double extra_decay) {
  kern::OptConfig cfg = cfg_;
  if (lr >= 0) cfg.lr = lr;
  cfg.weight_decay += extra_decay;
  T* s[kern::kMaxStateSlots] = {nullptr, nullptr, nullptr};
  for (int k = 0; k < num_slots(); ++k) s[k] = slots_[k].data() + where.offset;
  steps_[t] += 1;
  kern::optimizer_step<T>(cfg, params + where.offset, grads + where.offset, s, where.size, steps_[t]);
}

template <class T>
void Optimizer<T>::backup() {
  for (int k = 0; k < num_slots(); ++k) backup_[k].assign(slots_[k].begin(), slots_[k].end());
  steps_backup_ = steps_;
}

template <class T>
void Optimizer<T>::restore() {
  for (int k = 0; k < num_slots(); ++k) std::copy(backup_[k].begin(), backup_[k].end(), slots_[k].begin());
  steps_ = steps_backup_;
}

template class Optimizer<float>;
template class Optimizer<double>;

}  // namespace lp
