// Update schedules other than Simultaneous: Layerwise and LocoProp, as members of the model
// runtime (cpp/model) that they drive.
#include <algorithm>
#include <cmath>

#include "layerprop/eltwise.hpp"
#include "layerprop/gemm.hpp"
#include "layerprop/model.hpp"
#include "layerprop/runtime.hpp"

namespace lp {

// One unit at a time; before its update, its gradient is computed with every already-updated
// unit's new weights. Only what changed is recomputed: the forward from the last updated unit
// up, the backward from the loss down to the unit being updated.
template <class T>
double Model<T>::step_layerwise(const T* X, int64_t N, Labels<T> y) {
  ops_ = {};
  const std::vector<int> units = unit_order();
  double first_loss = 0;
  int dirty_from = 1;  // nodes >= dirty_from must be recomputed before the next gradient
  bool first = true;
  for (int L : units) {
    forward(X, N, FwdMode{training_, training_ && first, !first}, dirty_from);
    const double loss = loss_and_seed(N, y, true);
    if (first) first_loss = loss;
    first = false;
    backward(N, layer_nodes_[L].front(), L);
    apply_layer(L);
    dirty_from = layer_nodes_[L].front();
  }
  if (units.empty()) {
    forward(X, N, FwdMode{training_, training_, false});
    first_loss = loss_and_seed(N, y, false);
  }
  grads_ready_ = false;
  return first_loss;
}

// LocoProp (Amid, Anil & Warmuth 2022): one forward and backward give every layer a target;
// then each Linear layer, its input fixed, takes inner_steps steps on its own local loss:
//   S: t = a - gamma dL/da,    local gradient x^T (x W^T + b - t)
//   M: t = f(a) - gamma dL/da, local gradient x^T (f(x W^T + b) - t)
// with f the layer's transfer function (its activation; for the output layer the loss's link:
// softmax, sigmoid or identity) and learning rate base * max(1 - k/K, 0.25), k = 0..K-1.
// Norm layers take one ordinary step with their backprop gradient.
template <class T>
double Model<T>::step_locoprop(const T* X, int64_t N, Labels<T> y) {
  ops_ = {};
  forward(X, N, FwdMode{training_, training_, false});
  const double loss = loss_and_seed(N, y, true);
  backward(N);
  std::vector<int> lin, other;
  for (size_t L = 0; L < layers_.size(); ++L) {
    if (layer_tensors_[L].empty() || layer_nodes_[L].empty()) continue;
    (layers_[L].kind == LayerKind::Linear ? lin : other).push_back(static_cast<int>(L));
  }
  if (targets_.size() != layers_.size()) targets_.assign(layers_.size(), Buffer<T>());
  // Per layer: the target (cap x out), then scratch for the layer's local outputs.
  for (int L : lin)
    if (static_cast<int64_t>(targets_[L].size()) < 2 * cap_ * layers_[L].out)
      targets_[L].assign(static_cast<size_t>(2 * cap_ * layers_[L].out), T(0));
  // Targets for every layer before any weight moves.
  const bool M = sched_.kind == ScheduleKind::LocoPropM;
  const T gamma = T(sched_.target_lr);
  for (int L : lin) {
    const int i = layer_nodes_[L].front();
    const int64_t n = N * layers_[L].out;
    const T* a = outs_[i].data();
    const T* g = gouts_[i].data();
    T* t = targets_[L].data();
    if (!M) {
      for (int64_t k = 0; k < n; ++k) t[k] = a[k] - gamma * g[k];
    } else if (fused_into_[i] >= 0 || (consumers_[i].size() == 1 && nodes_[consumers_[i][0]].kind == NodeKind::Activation)) {
      const T* fa = outs_[consumers_[i][0]].data();
      for (int64_t k = 0; k < n; ++k) t[k] = fa[k] - gamma * g[k];
    } else if (i == output_ && loss_ != LossKind::MSE) {
      const int64_t D = layers_[L].out;
      for (int64_t r = 0; r < N; ++r) {
        const T* ar = a + r * D;
        T* tr = t + r * D;
        if (loss_ == LossKind::BCEWithLogits) {
          for (int64_t c = 0; c < D; ++c) tr[c] = T(1) / (T(1) + std::exp(-ar[c]));
        } else if (loss_ == LossKind::Poisson) {
          for (int64_t c = 0; c < D; ++c) tr[c] = std::exp(ar[c]);
        } else {
          const T m = *std::max_element(ar, ar + D);
          T s = 0;
          for (int64_t c = 0; c < D; ++c) s += (tr[c] = std::exp(ar[c] - m));
          for (int64_t c = 0; c < D; ++c) tr[c] /= s;
        }
        for (int64_t c = 0; c < D; ++c) tr[c] -= gamma * g[r * D + c];
      }
    } else {
      for (int64_t k = 0; k < n; ++k) t[k] = a[k] - gamma * g[k];
    }
  }
  for (int L : other) apply_layer(L);
  // The local problems are independent: one layer per thread when there are enough layers.
  const int nt = std::min<int>(get_num_threads(), static_cast<int>(lin.size()));
  const int64_t nlin = static_cast<int64_t>(lin.size());
  if (nt > 1) {
    note_parallel_region();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t u = 0; u < nlin; ++u) locoprop_unit(lin[u], N);
  } else {
    for (int64_t u = 0; u < nlin; ++u) locoprop_unit(lin[u], N);
  }
  ops_.forward += nlin * sched_.inner_steps;
  ops_.backward += nlin * sched_.inner_steps;
  grads_ready_ = false;
  return loss;
}

template <class T>
void Model<T>::locoprop_unit(int L, int64_t N) {
  const int i = layer_nodes_[L].front();
  const NodeSpec& s = nodes_[i];
  const LayerSpec& l = layers_[L];
  const bool M = sched_.kind == ScheduleKind::LocoPropM;
  // Transfer function of the matching loss.
  Act act = Act::Identity;
  kern::ActParams<T> act_params;
  int link = 0;  // 1 softmax, 2 sigmoid, 3 exp (output layer of cross-entropy / bce / poisson)
  if (M) {
    if (consumers_[i].size() == 1 && nodes_[consumers_[i][0]].kind == NodeKind::Activation) {
      act = nodes_[consumers_[i][0]].act;
      act_params = kern::ActParams<T>(nodes_[consumers_[i][0]].act_settings);
    } else if (i == output_) {
      link = loss_ == LossKind::CrossEntropy ? 1 : loss_ == LossKind::BCEWithLogits ? 2
             : loss_ == LossKind::Poisson ? 3 : 0;
    }
  }
  const T* x = out(s.inputs[0]);
  const T* t = targets_[L].data();
  // Scratch: the layer's local outputs (its own buffer: node outputs may be other layers'
  // inputs) and their residual (this node's gradient buffer, no longer needed).
  const int64_t D = l.out, n = N * D;
  T* a = targets_[L].data() + cap_ * D;
  T* d = gouts_[i].data();
  const double base = sched_.inner_lr > 0 ? sched_.inner_lr : optim_.config().lr;
  for (int64_t k = 0; k < sched_.inner_steps; ++k) {
    kern::Epilogue<T> ep;
    ep.bias = b_off_[L] >= 0 ? params_.data() + b_off_[L] : nullptr;
    if (M && link == 0 && act != Act::Identity) {  // f(x W^T + b) straight from the GEMM's store
      ep.act = act;
      ep.params = act_params;
      ep.act_out = d;
      ep.ld_act = D;
    }
    linear_forward(L, x, N, a, &ep);
    if (link == 1) {
      for (int64_t r = 0; r < N; ++r) {
        const T* ar = a + r * D;
        const T m = *std::max_element(ar, ar + D);
        T sum = 0;
        for (int64_t c = 0; c < D; ++c) sum += (d[r * D + c] = std::exp(ar[c] - m));
        for (int64_t c = 0; c < D; ++c) d[r * D + c] = d[r * D + c] / sum - t[r * D + c];
      }
    } else if (link == 2) {
      for (int64_t q = 0; q < n; ++q) d[q] = T(1) / (T(1) + std::exp(-a[q])) - t[q];
    } else if (link == 3) {
      for (int64_t q = 0; q < n; ++q) d[q] = std::exp(a[q]) - t[q];
    } else if (ep.act_out) {
      for (int64_t q = 0; q < n; ++q) d[q] -= t[q];
    } else {
      for (int64_t q = 0; q < n; ++q) d[q] = a[q] - t[q];
    }
    linear_weight_grad(L, x, N, d, false);
    if (b_off_[L] >= 0) kern::colsum<T>(grads_.data() + b_off_[L], d, N, D, false);
    apply_layer(L, base * std::max(1.0 - double(k) / double(sched_.inner_steps), 0.25));
  }
}

template double Model<float>::step_layerwise(const float*, int64_t, Labels<float>);
template double Model<double>::step_layerwise(const double*, int64_t, Labels<double>);
template double Model<float>::step_locoprop(const float*, int64_t, Labels<float>);
template double Model<double>::step_locoprop(const double*, int64_t, Labels<double>);

}  // namespace lp
