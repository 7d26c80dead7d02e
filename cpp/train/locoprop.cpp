// LocoProp (Amid, Anil & Warmuth 2022): one forward and backward give every layer a target;
// then each Linear layer, its input fixed, takes inner_steps steps on its own local loss:
//   S: t = a - gamma dL/da,    local gradient x^T (x W^T + b - t)
//   M: t = f(a) - gamma dL/da, local gradient x^T (f(x W^T + b) - t)
// with f the layer's transfer function (its activation; for the output layer the loss's link:
// softmax, sigmoid, exp or identity) and learning rate base * max(1 - k/K, 0.25), k = 0..K-1.
// Norm layers take one ordinary step with their backprop gradient. The local problems are
// independent given the targets: one layer per thread when there are enough layers.
#include <algorithm>
#include <cmath>

#include "layerprop/eltwise.hpp"
#include "layerprop/loss.hpp"
#include "layerprop/runtime.hpp"
#include "train/schedules.hpp"

namespace lp {
namespace {

template <class T>
class LocoProp final : public Schedule<T> {
 public:
  explicit LocoProp(const ScheduleConfig& cfg) : cfg_(cfg), M_(cfg.kind == ScheduleKind::LocoPropM) {
    if (cfg.inner_steps < 1 || cfg.inner_steps > kMaxInnerSteps)
      throw ValueError("inner_steps: expected 1 to " + std::to_string(kMaxInnerSteps) + ", got " +
                       std::to_string(cfg.inner_steps));
  }

  void validate(const Model<T>& m) const override {
    for (size_t L = 0; L < m.layers().size(); ++L)
      if (m.layer_nodes(static_cast<int>(L)).size() > 1)
        throw ValueError("schedule: LocoProp needs every layer used once; layer " + std::to_string(L) +
                         " is shared by " + std::to_string(m.layer_nodes(static_cast<int>(L)).size()) + " nodes");
  }

  // M's rule needs each Linear's transfer function: an activation that is its only consumer,
  // or, for the output layer, the loss's link (identity for mse). Any other Linear (followed by
  // a norm layer, Dropout, Add or Concat, or read by several nodes) takes S's target.
  std::vector<int> fallbacks(const Model<T>& m) const override {
    std::vector<int> out;
    if (!M_) return out;
    for (int L : m.units()) {
      if (m.layers()[L].kind != LayerKind::Linear) continue;
      const int i = m.layer_nodes(L).front();
      const auto& cons = m.consumers(i);
      const bool act = cons.size() == 1 && m.nodes()[cons[0]].kind == NodeKind::Activation;
      if (!act && i != m.output()) out.push_back(L);
    }
    return out;
  }

  double step(Model<T>& m, const T* x, int64_t N, Labels<T> y, int& fault) override {
    m.reset_ops();
    const bool training = m.training();
    m.forward(x, N, FwdMode{training, training, false});
    const double loss = m.dp_begin(N, y, m.loss_and_seed(N, y, true));  // data-parallel: the batch's
    m.backward(N);
    std::vector<int> lin, other;
    for (int L : m.units())
      (m.layers()[L].kind == LayerKind::Linear ? lin : other).push_back(L);
    // Per layer: the target (capacity x out), then scratch for the layer's local outputs.
    const int64_t cap = m.capacity();
    if (targets_.size() != m.layers().size()) targets_.assign(m.layers().size(), Buffer<T>());
    for (int L : lin)
      if (static_cast<int64_t>(targets_[L].size()) < 2 * cap * m.layers()[L].out)
        targets_[L].assign(static_cast<size_t>(2 * cap * m.layers()[L].out), T(0));
    // Targets for every layer before any weight moves.
    for (int L : lin) make_target(m, L, N);
    for (int L : other) {
      m.dp_average(L);
      m.apply_layer(L);
    }
    // The layers' problems are independent given the targets: one pool item each, largest
    // first so that the last item to start is a small one; the kernels inside run serially.
    const int64_t nlin = static_cast<int64_t>(lin.size());
    int64_t local_work = 0;
    for (int L : lin) local_work += N * m.layers()[L].in * m.layers()[L].out;
    std::vector<int> by_size(lin);
    std::stable_sort(by_size.begin(), by_size.end(), [&](int a, int b) {
      return m.layers()[a].in * m.layers()[a].out > m.layers()[b].in * m.layers()[b].out;
    });
    // Data-parallel: the layers in turn, on this thread (each inner step sums over the ranks,
    // and the ranks must make their calls in the same order).
    const int nt = m.distributed() ? 1 : std::min<int>(threads_for(Work::Gemm, local_work * cfg_.inner_steps),
                                                       static_cast<int>(nlin));
    parallel_for(nlin, nt, [&](int64_t u) { local_problem(m, by_size[u], N); });
    m.add_ops(nlin * cfg_.inner_steps, nlin * cfg_.inner_steps);
    fault = 0;  // judged by the model on the whole step (updates_inside_step)
    return loss;
  }

 private:
  // The layer's transfer function for M: its activation when it feeds exactly one; for the
  // output layer the loss's link (1 softmax, 2 sigmoid, 3 exp); else the identity (M falls
  // back to S for that layer).
  struct Transfer {
    Act act = Act::Identity;
    kern::ActParams<T> params;
    int link = 0;
    int act_node = -1;
  };
  Transfer transfer(const Model<T>& m, int i) const {
    Transfer f;
    if (!M_) return f;
    const auto& cons = m.consumers(i);
    if (cons.size() == 1 && m.nodes()[cons[0]].kind == NodeKind::Activation) {
      f.act = m.nodes()[cons[0]].act;
      f.params = kern::ActParams<T>(m.nodes()[cons[0]].act_settings);
      f.act_node = cons[0];
    } else if (i == m.output()) {
      const LossKind loss = m.loss_kind();
      f.link = loss == LossKind::CrossEntropy ? 1 : loss == LossKind::BCEWithLogits ? 2 : loss == LossKind::Poisson ? 3 : 0;
    }
    return f;
  }

  void make_target(Model<T>& m, int L, int64_t N) {
    const int i = m.layer_nodes(L).front();
    const int64_t D = m.layers()[L].out, n = N * D;
    const T* a = m.node_out(i);
    const T* g = m.node_grad(i);
    T* t = targets_[L].data();
    // Data-parallel: g is this rank's mean gradient; scaled by the rank's share it is the
    // batch's, so targets and the summed local gradients match one process.
    const T gamma = T(cfg_.target_lr * m.dp_share());
    const Transfer f = transfer(m, i);
    const T* fa = a;  // S, and M without a transfer function: the pre-activation itself
    if (f.act_node >= 0) {
      fa = m.node_out(f.act_node);
    } else if (f.link) {
      apply_link(t, a, N, D, f.link);
      fa = t;
    }
    for (int64_t k = 0; k < n; ++k) t[k] = fa[k] - gamma * g[k];
  }

  // out = link(z) row by row: softmax (1), sigmoid (2) or exp (3).
  static void apply_link(T* out, const T* z, int64_t N, int64_t D, int link) {
    if (link == 1) kern::softmax_rows<T>(out, z, N, D);
    else if (link == 2) for (int64_t q = 0; q < N * D; ++q) out[q] = T(1) / (T(1) + std::exp(-z[q]));
    else for (int64_t q = 0; q < N * D; ++q) out[q] = std::exp(z[q]);
  }

  void local_problem(Model<T>& m, int L, int64_t N) {
    const int i = m.layer_nodes(L).front();
    const Transfer f = transfer(m, i);
    const T* x = m.node_out(m.nodes()[i].inputs[0]);
    const T* t = targets_[L].data();
    // Scratch: the layer's local outputs (its own buffer: node outputs may be other layers'
    // inputs) and their residual (this node's gradient buffer, no longer needed).
    const int64_t D = m.layers()[L].out, n = N * D;
    T* a = targets_[L].data() + m.capacity() * D;
    T* d = m.node_grad(i);
    const double base = cfg_.inner_lr > 0 ? cfg_.inner_lr : m.optimizer().lr;
    const T* bias = m.bias(L);
    for (int64_t k = 0; k < cfg_.inner_steps; ++k) {
      kern::Epilogue<T> ep;
      ep.bias = bias;
      if (f.act_node >= 0 && f.act != Act::Identity) {  // f(x W^T + b) straight from the store
        ep.act = f.act;
        ep.params = f.params;
        ep.act_out = d;
        ep.ld_act = D;
      }
      m.linear_forward(L, x, N, a, &ep);
      if (f.link) {
        apply_link(d, a, N, D, f.link);
        for (int64_t q = 0; q < n; ++q) d[q] = d[q] - t[q];
      } else if (ep.act_out) {
        for (int64_t q = 0; q < n; ++q) d[q] -= t[q];
      } else {
        for (int64_t q = 0; q < n; ++q) d[q] = a[q] - t[q];
      }
      m.linear_weight_grad(L, x, N, d, false);
      if (bias) kern::colsum<T>(m.bias_grad(L), d, N, D, false);
      m.dp_sum(L);  // data-parallel: summed over every rank's rows
      m.apply_layer(L, base * std::max(1.0 - double(k) / double(cfg_.inner_steps), 0.25));
    }
  }

  ScheduleConfig cfg_;
  bool M_;
  std::vector<Buffer<T>> targets_;  // per layer: (capacity x out) target, then local outputs
};

}  // namespace

template <class T>
std::unique_ptr<Schedule<T>> make_locoprop(const ScheduleConfig& cfg) {
  return std::make_unique<LocoProp<T>>(cfg);
}
template std::unique_ptr<Schedule<float>> make_locoprop<float>(const ScheduleConfig&);
template std::unique_ptr<Schedule<double>> make_locoprop<double>(const ScheduleConfig&);

}  // namespace lp
