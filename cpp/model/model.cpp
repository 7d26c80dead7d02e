#include "layerprop/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "layerprop/dropout.hpp"
#include "layerprop/eltwise.hpp"
#include "layerprop/gemm.hpp"
#include "layerprop/loss.hpp"
#include "layerprop/norm.hpp"
#include "layerprop/runtime.hpp"

namespace lp {

template <class T>
Model<T>::Model(std::vector<LayerSpec> layers, std::vector<NodeSpec> nodes, int output)
    : g_(std::move(layers), std::move(nodes), output), ps_(g_) {
  const int n = static_cast<int>(g_.nodes.size());
  optim_.resize_steps(ps_.tensors.size());
  ws_.ensure(g_, 0);  // one (empty) slot per node
  mask_keys_.assign(n, 0);
  written_.assign(n, 0);
  pwritten_.assign(g_.layers.size(), 0);
}

template <class T>
void Model<T>::compile(LossKind loss, const kern::OptConfig& opt, const ScheduleConfig& sched,
                       const kern::ClipConfig& clip) {
  if (!(clip.max_norm >= 0 && std::isfinite(clip.max_norm)))
    throw ValueError("clip_grad_norm: expected a finite number > 0, got " + std::to_string(clip.max_norm));
  if (!(clip.max_value >= 0 && std::isfinite(clip.max_value)))
    throw ValueError("clip_grad_value: expected a finite number > 0, got " + std::to_string(clip.max_value));
  if (clip.active() && sched.kind != ScheduleKind::Simultaneous)
    throw ValueError("clip_grad_norm / clip_grad_value: gradient clipping applies to the Simultaneous schedule "
                     "(the other schedules update each layer with its own recomputed gradient)");
  auto schedule = make_schedule<T>(sched);  // checks the settings
  schedule->validate(*this);                // and that it can train this graph
  optim_.configure(opt, static_cast<int64_t>(ps_.params.size()), ps_.tensors.size());
  schedule_ = std::move(schedule);
  loss_ = loss;
  sched_ = sched;
  clip_ = clip;
  compiled_ = true;
  grads_ready_ = false;
  grads_fault_ = 0;
}

template <class T>
std::vector<int> Model<T>::units() const {
  std::vector<int> units;
  for (size_t L = 0; L < g_.layers.size(); ++L)
    if (!ps_.layer_tensors[L].empty() && !g_.layer_nodes[L].empty()) units.push_back(static_cast<int>(L));
  // Topological position of a unit: its first use.
  std::stable_sort(units.begin(), units.end(), [&](int a, int b) {
    return g_.layer_nodes[a].front() < g_.layer_nodes[b].front();
  });
  return units;
}


template <class T>
void Model<T>::layer_forward(int i, int64_t N, const FwdMode& mode) {
  const NodeSpec& s = g_.nodes[i];
  const int64_t w = s.width;
  const LayerSpec& l = g_.layers[s.layer];
  const T* x = out(s.inputs[0]);
  const T* gamma = ps_.w_off[s.layer] >= 0 && l.kind != LayerKind::Linear ? ps_.params.data() + ps_.w_off[s.layer] : nullptr;
  const T* beta = ps_.b_off[s.layer] >= 0 ? ps_.params.data() + ps_.b_off[s.layer] : nullptr;
  T* a = ws_.aux[i].data();
  if (s.kind == NodeKind::BatchNorm) {
    if (mode.training) {
      if (N < 2)
        throw ValueError("X: BatchNorm1d needs more than 1 sample per batch in training mode, got 1 "
                         "(use a larger batch or model.eval())");
      T* rm = mode.update_stats ? ps_.buffers.data() + ps_.rm_off[s.layer] : nullptr;
      T* rv = mode.update_stats ? ps_.buffers.data() + ps_.rv_off[s.layer] : nullptr;
      kern::batchnorm_forward_train<T>(ws_.outs[i].data(), a, a + w, x, gamma, beta, N, w, l.eps, rm, rv, l.momentum);
    } else {
      kern::batchnorm_forward_eval<T>(ws_.outs[i].data(), a, a + w, x, gamma, beta, N, w, l.eps,
                                      ps_.buffers.data() + ps_.rm_off[s.layer], ps_.buffers.data() + ps_.rv_off[s.layer]);
    }
  } else {
    kern::layernorm_forward<T>(ws_.outs[i].data(), a, a + N, x, gamma, beta, N, w, l.eps);
  }
}

template <class T>
void Model<T>::forward(const T* X, int64_t N, FwdMode mode, int from) {
  ws_.ensure(g_, N);
  x_ = X;
  // A BatchNorm batch of 1 is refused before anything changes.
  if (mode.training && N < 2)
    for (int i = from; i <= g_.output; ++i)
      if (g_.nodes[i].kind == NodeKind::BatchNorm)
        throw ValueError("X: BatchNorm1d needs more than 1 sample per batch in training mode, got 1 "
                         "(use a larger batch or model.eval())");
  for (int i = from; i <= g_.output; ++i) {
    const NodeSpec& s = g_.nodes[i];
    const int64_t w = s.width;
    ops_.forward += 1;
    switch (s.kind) {
      case NodeKind::Linear: {
        const LayerSpec& l = g_.layers[s.layer];
        kern::Epilogue<T> ep;
        ep.bias = ps_.b_off[s.layer] >= 0 ? ps_.params.data() + ps_.b_off[s.layer] : nullptr;
        if (g_.fused_into[i] >= 0) {
          const NodeSpec& a = g_.nodes[g_.fused_into[i]];
          ep.act = a.act;
          ep.params = kern::ActParams<T>(a.act_settings);
          ep.act_out = ws_.outs[g_.fused_into[i]].data();
          ep.ld_act = w;
        }
        (void)l;
        linear_forward(s.layer, out(s.inputs[0]), N, ws_.outs[i].data(), &ep);
        break;
      }
      case NodeKind::BatchNorm:
      case NodeKind::LayerNorm: layer_forward(i, N, mode); break;
      case NodeKind::Activation:
        if (!g_.fused[i]) kern::act_forward<T>(ws_.outs[i].data(), out(s.inputs[0]), N * w, s.act, kern::ActParams<T>(s.act_settings));
        else ops_.forward -= 1;  // done by its Linear
        break;
      case NodeKind::Dropout:
        if (mode.training && s.p > 0) {
          if (!mode.reuse_masks)
            mask_keys_[i] = kern::mix64(seed_ ^ kern::mix64(draws_++ * 0x100000001B3ull + static_cast<uint64_t>(i)));
          kern::dropout_forward<T>(ws_.outs[i].data(), ws_.aux[i].data(), out(s.inputs[0]), N * w, s.p,
                             mask_keys_[i], mode.reuse_masks);
        } else {
          std::memcpy(ws_.outs[i].data(), out(s.inputs[0]), sizeof(T) * N * w);
        }
        break;
      case NodeKind::Add:
        kern::add_into<T>(ws_.outs[i].data(), out(s.inputs[0]), N * w, false);
        for (size_t k = 1; k < s.inputs.size(); ++k)
          kern::add_into<T>(ws_.outs[i].data(), out(s.inputs[k]), N * w, true);
        break;
      case NodeKind::Concat: {
        int64_t c0 = 0;
        for (int j : s.inputs) {
          kern::concat_forward<T>(ws_.outs[i].data(), out(j), N, w, c0, g_.nodes[j].width);
          c0 += g_.nodes[j].width;
        }
        break;
      }
      default: break;
    }
  }
}

template <class T>
double Model<T>::loss_and_seed(int64_t N, Labels<T> y, bool want_grad) {
  const T* z = out(g_.output);
  T* g = want_grad ? ws_.gouts[g_.output].data() : nullptr;
  const int64_t D = out_width();
  switch (loss_) {
    case LossKind::CrossEntropy: return kern::cross_entropy<T>(g, ws_.row_loss.data(), z, y.cls, y.weight, N, D);
    case LossKind::MSE: return kern::mse<T>(g, ws_.row_loss.data(), z, y.target, y.weight, N, D);
    case LossKind::Poisson: return kern::poisson_nll<T>(g, ws_.row_loss.data(), z, y.target, y.weight, N, D);
    case LossKind::BCEWithLogits:
    default: return kern::bce_with_logits<T>(g, ws_.row_loss.data(), z, y.target, y.weight, N, D);
  }
}

template <class T>
void Model<T>::norm_backward(int i, int64_t N, bool param_grads, bool want_dx) {
  const NodeSpec& s = g_.nodes[i];
  const int L = s.layer;
  const int64_t w = s.width;
  const int j = s.inputs[0];
  T* dx = want_dx ? ws_.gouts[j].data() : nullptr;
  const bool acc_dx = want_dx && written_[j];
  T* dgamma = param_grads && ps_.w_off[L] >= 0 ? ps_.grads.data() + ps_.w_off[L] : nullptr;
  T* dbeta = param_grads && ps_.b_off[L] >= 0 ? ps_.grads.data() + ps_.b_off[L] : nullptr;
  const T* gamma = ps_.w_off[L] >= 0 ? ps_.params.data() + ps_.w_off[L] : nullptr;
  const T* a = ws_.aux[i].data();
  if (s.kind == NodeKind::BatchNorm)
    kern::batchnorm_backward<T>(dx, dgamma, dbeta, ws_.gouts[i].data(), out(j), a, a + w, gamma, N, w,
                                training_, acc_dx, pwritten_[L]);
  else
    kern::layernorm_backward<T>(dx, dgamma, dbeta, ws_.gouts[i].data(), out(j), a, a + N, gamma, N, w,
                                acc_dx, pwritten_[L]);
  if (dgamma || dbeta) pwritten_[L] = 1;
  if (want_dx) written_[j] = 1;
}

template <class T>
void Model<T>::backward(int64_t N, int down_to, int only_layer) {
  std::fill(written_.begin(), written_.end(), 0);
  std::fill(pwritten_.begin(), pwritten_.end(), 0);
  written_[g_.output] = 1;
  // An input below `down_to` takes no gradient: its producers are not revisited.
  auto wants = [&](int j) { return g_.needs_grad[j] && j >= down_to; };
  for (int i = g_.output; i >= down_to; --i) {
    if (!written_[i] || !g_.needs_grad[i]) continue;
    const NodeSpec& s = g_.nodes[i];
    const T* dy = ws_.gouts[i].data();
    const int64_t w = s.width;
    ops_.backward += 1;
    switch (s.kind) {
      case NodeKind::Linear: {
        const int L = s.layer;
        const LayerSpec& l = g_.layers[L];
        const int j = s.inputs[0];
        if (only_layer < 0 || only_layer == L) {
          const bool acc = pwritten_[L];
          // dw (OUT,IN) = dz^T (OUT,N) . x (N,IN); db = column sums of dz
          if (ps_.b_off[L] >= 0 && out(j) != sparse_marker()) {  // both in one pass over dz
            kern::gemm_tn_colsum<T>(l.out, l.in, N, dy, l.out, out(j), l.in, ps_.grads.data() + ps_.w_off[L], l.in, acc,
                                    ps_.grads.data() + ps_.b_off[L], acc);
          } else {
            linear_weight_grad(L, out(j), N, dy, acc);
            if (ps_.b_off[L] >= 0) kern::colsum<T>(ps_.grads.data() + ps_.b_off[L], dy, N, l.out, acc);
          }
          pwritten_[L] = 1;
        }
        if (wants(j)) {  // dx (N,IN) = dz (N,OUT) . w (OUT,IN)
          kern::gemm<T>(false, false, N, l.in, l.out, dy, l.out, ps_.params.data() + ps_.w_off[L], l.in,
                        ws_.gouts[j].data(), l.in, written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::BatchNorm:
      case NodeKind::LayerNorm: {
        const bool pg = only_layer < 0 || only_layer == s.layer;
        if (wants(s.inputs[0])) norm_backward(i, N, pg, true);
        else if (pg) norm_backward(i, N, true, false);  // parameter gradients only
        break;
      }
      case NodeKind::Activation: {
        const int j = s.inputs[0];
        if (wants(j)) {
          kern::act_backward<T>(ws_.gouts[j].data(), dy, out(j), out(i), N * w, s.act,
                                kern::ActParams<T>(s.act_settings), written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Dropout: {
        const int j = s.inputs[0];
        if (wants(j)) {
          if (training_ && s.p > 0) kern::mul_into<T>(ws_.gouts[j].data(), dy, ws_.aux[i].data(), N * w, written_[j]);
          else kern::add_into<T>(ws_.gouts[j].data(), dy, N * w, written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Add:
        for (int j : s.inputs)
          if (wants(j)) {
            kern::add_into<T>(ws_.gouts[j].data(), dy, N * w, written_[j]);
            written_[j] = 1;
          }
        break;
      case NodeKind::Concat: {
        int64_t c0 = 0;
        for (int j : s.inputs) {
          const int64_t wj = g_.nodes[j].width;
          if (wants(j)) {
            kern::concat_backward<T>(ws_.gouts[j].data(), dy, N, w, c0, wj, written_[j]);
            written_[j] = 1;
          }
          c0 += wj;
        }
        break;
      }
      default: break;
    }
  }
  if (only_layer >= 0 || down_to > 1) return;
  // A layer the loss does not reach has a zero gradient.
  for (size_t L = 0; L < g_.layers.size(); ++L)
    if (!pwritten_[L])
      for (int t : ps_.layer_tensors[L]) std::fill_n(ps_.grads.data() + ps_.tensors[t].offset, ps_.tensors[t].size(), T(0));
}

template <class T>
void Model<T>::require_labels(Labels<T> y) const {
  // The bindings chose the labels for the loss compiled when they checked them; a compile from
  // another thread may have changed it since. Read under the mutex, like every setting.
  if (!compiled_)
    throw std::runtime_error("the model is not compiled: call model.compile(loss=..., optimizer=...) first");
  if (loss_ == LossKind::CrossEntropy ? !y.cls : !y.target)
    throw std::runtime_error("y: the model was compiled again with another loss while this call waited for it; "
                             "the labels given are for the previous loss");
}

template <class T>
const T* Model<T>::stage_weights(const T* w, int64_t N, const int64_t* src, int64_t row0, bool positive_sum) {
  if (!w) return nullptr;
  if (static_cast<int64_t>(wbatch_.size()) < N) wbatch_.resize(static_cast<size_t>(N));
  double sum = 0;
  for (int64_t r = 0; r < N; ++r) {
    const int64_t row = src ? src[r] : row0 + r;
    const T v = w[row];  // read once: the copy is what the kernels see
    check_sample_weight(v, row);
    wbatch_[r] = v;
    sum += static_cast<double>(v);
  }
  if (!std::isfinite(sum) || (positive_sum && !(sum > 0)))
    throw ValueError("sample_weight: the weights of a batch must have a positive, finite sum, got " +
                     std::to_string(sum));
  return wbatch_.data();
}

template <class T>
Labels<T> Model<T>::stage_labels(Labels<T> y, int64_t N, const int64_t* src, int64_t row0, bool positive_sum) {
  require_labels(y);
  Labels<T> out;
  out.weight = stage_weights(y.weight, N, src, row0, positive_sum);
  if (loss_ != LossKind::CrossEntropy) {
    out.target = y.target + row0 * out_width();
    return out;
  }
  if (static_cast<int64_t>(lbatch_.size()) < N) lbatch_.resize(static_cast<size_t>(N));
  const int64_t C = out_width();
  for (int64_t r = 0; r < N; ++r) {
    const int64_t row = src ? src[r] : row0 + r;
    const int64_t v = y.cls[row];  // read once: the copy is what the kernels see
    check_class_label(v, row, C);
    lbatch_[r] = v;
  }
  out.cls = lbatch_.data();
  return out;
}

template <class T>
double Model<T>::compute_gradients(const Input<T>& X, int64_t N, Labels<T> y, bool update_stats) {
  y = stage_labels(y, N);
  return gradients(stage_input(X, N, nullptr, 0), N, y, update_stats);
}

template <class T>
double Model<T>::gradients(const T* X, int64_t N, Labels<T> y, bool update_stats) {
  ops_ = {};
  const bool stats = training_ && update_stats && !ps_.buffers.empty();
  if (stats) stats_backup_.assign(ps_.buffers.begin(), ps_.buffers.end());
  const uint64_t draws = draws_;
  forward(X, N, FwdMode{training_, training_ && update_stats, false});
  double loss = loss_and_seed(N, y, true);
  backward(N);
  if (distributed()) {  // the batch's loss and mean gradients, the same on every rank
    loss = dp_begin(N, y, loss);
    dp_average(-1);
  }
  grads_fault_ = !std::isfinite(loss) ? 1 : !kern::all_finite<T>(ps_.grads.data(), static_cast<int64_t>(ps_.grads.size())) ? 2 : 0;
  grads_ready_ = grads_fault_ == 0;
  if (grads_fault_) {  // the forward's side effects are put back; the gradients stay to be seen
    if (stats) std::copy(stats_backup_.begin(), stats_backup_.end(), ps_.buffers.begin());
    draws_ = draws;
  } else if (stats) {
    dp_sync_buffers();
  }
  return loss;
}

template <class T>
double Model<T>::dp_begin(int64_t N, Labels<T> y, double local_loss) {
  dp_share_ = 1.0;
  if (!reducer_) return local_loss;
  double w = static_cast<double>(N);
  if (y.weight) {
    w = 0;
    for (int64_t i = 0; i < N; ++i) w += static_cast<double>(y.weight[i]);
  }
  double v[2] = {w, w * local_loss};
  reducer_->sum_scalars(v, 2);
  dp_share_ = v[0] > 0 ? w / v[0] : 0.0;
  return v[0] > 0 ? v[1] / v[0] : std::numeric_limits<double>::quiet_NaN();
}

template <class T>
void Model<T>::dp_average(int L) {
  if (!reducer_) return;
  const T share = static_cast<T>(dp_share_);
  auto one = [&](int64_t off, int64_t n) {
    T* g = ps_.grads.data() + off;
    for (int64_t k = 0; k < n; ++k) g[k] *= share;
    reducer_->sum(g, n);
  };
  if (L < 0) {
    one(0, static_cast<int64_t>(ps_.grads.size()));
  } else {
    for (int t : ps_.layer_tensors[L]) one(ps_.tensors[t].offset, ps_.tensors[t].size());
  }
}

template <class T>
void Model<T>::dp_sum(int L) {
  if (!reducer_) return;
  for (int t : ps_.layer_tensors[L]) reducer_->sum(ps_.grads.data() + ps_.tensors[t].offset, ps_.tensors[t].size());
}

template <class T>
void Model<T>::dp_sync_buffers() {
  if (reducer_ && !ps_.buffers.empty()) reducer_->broadcast(ps_.buffers.data(), static_cast<int64_t>(ps_.buffers.size()));
}

template <class T>
double Model<T>::loss_only(const Input<T>& X, int64_t N, Labels<T> y) {
  y = stage_labels(y, N);
  forward(stage_input(X, N, nullptr, 0), N, FwdMode{training_, false, false});
  return loss_and_seed(N, y, false);
}

template <class T>
void Model<T>::apply_layer(int L, double lr, double l2_weights) {
  if (ps_.layer_tensors[L].empty()) return;  // nothing stored: nothing to update
  params_changed();
  for (int t : ps_.layer_tensors[L]) {
    const bool weight = l2_weights != 0 && g_.layers[L].kind == LayerKind::Linear && ps_.tensors[t].offset == ps_.w_off[L];
    optim_.step(t, OptTensor{ps_.tensors[t].offset, ps_.tensors[t].size()}, ps_.params.data(), ps_.grads.data(), lr,
                weight ? l2_weights : 0.0);
  }
}

template <class T>
void Model<T>::apply_gradients(double l2_weights, double grad_scale) {
  if (grad_scale != 1.0) {
    const T c = static_cast<T>(grad_scale);
    for (T& g : ps_.grads) g *= c;
  }
  if (clip_.active()) kern::clip_gradients<T>(clip_, ps_.grads.data(), static_cast<int64_t>(ps_.grads.size()));
  for (size_t L = 0; L < g_.layers.size(); ++L) apply_layer(static_cast<int>(L), -1.0, l2_weights);
  grads_ready_ = false;
}

template <class T>
double Model<T>::guarded_step(const T* X, int64_t N, Labels<T> y, int& fault) {
  const int cap = governor_.next_cap();
  if (cap < 0) return guarded_step_body(X, N, y, fault);
  const ThreadCap capped(cap);
  const int64_t t0 = StepGovernor::ticks();
  const double loss = guarded_step_body(X, N, y, fault);
  governor_.record(StepGovernor::ticks() - t0, N);
  return loss;
}

template <class T>
double Model<T>::guarded_step_body(const T* X, int64_t N, Labels<T> y, int& fault) {
  fault = 0;
  if (!schedule_->updates_inside_step())  // it checks the gradients before it applies them
    return schedule_->step(*this, X, N, y, fault);
  // The schedule updates inside the step: everything it may change is kept aside (a copy is
  // small next to its several passes) and put back if the step went non-finite.
  params_backup_.assign(ps_.params.begin(), ps_.params.end());
  optim_.backup();  // every named state slot and the step counts
  stats_backup_.assign(ps_.buffers.begin(), ps_.buffers.end());
  const uint64_t draws = draws_;
  const double loss = schedule_->step(*this, X, N, y, fault);
  if (!fault)
    fault = !std::isfinite(loss) ? 1 : !kern::all_finite<T>(ps_.params.data(), static_cast<int64_t>(ps_.params.size())) ? 2 : 0;
  grads_fault_ = fault;
  grads_ready_ = false;
  if (fault) {
    params_changed();
    std::copy(params_backup_.begin(), params_backup_.end(), ps_.params.begin());
    optim_.restore();
    std::copy(stats_backup_.begin(), stats_backup_.end(), ps_.buffers.begin());
    draws_ = draws;
  } else if (training_) {
    dp_sync_buffers();
  }
  return loss;
}

template <class T>
double Model<T>::train_step(const Input<T>& X, int64_t N, Labels<T> y) {
  y = stage_labels(y, N);
  int fault = 0;
  const double loss = guarded_step(stage_input(X, N, nullptr, 0), N, y, fault);
  if (fault)
    throw NonFiniteError(std::string(fault == 1 ? "the loss is not finite (" + std::to_string(loss) + ")"
                                                : "a gradient (or a parameter after the update) is not finite") +
                         "; the step was not applied: parameters, optimizer state and BatchNorm statistics "
                         "are as before it (lower the learning rate, or check the data)");
  return loss;
}

template <class T>
typename Model<T>::EpochResult Model<T>::train_epoch(const Input<T>& X, int64_t rows, Labels<T> y, const int64_t* order,
                                                     int64_t n, int64_t batch, double* losses, OnNonFinite policy) {
  require_labels(y);
  const int64_t D = out_width();
  batch = std::min(batch, n);  // scratch for the rows present, whatever batch_size says
  const std::string what = "batch_size: a batch of " + std::to_string(batch) + " rows";
  if (y.target && static_cast<int64_t>(tbatch_.size()) < checked_mul(batch, D, what))
    tbatch_.assign(static_cast<size_t>(batch * D), T(0));
  EpochResult res;
  int64_t b = 0;
  for (int64_t s = 0; s < n; s += batch, ++b) {
    const int64_t nb = std::min(batch, n - s);
    // The caller's order array may change under us (another thread): each index is read once,
    // into the model's own buffer, checked there, and only the copy is used.
    if (static_cast<int64_t>(rows_.size()) < nb) rows_.resize(static_cast<size_t>(nb));
    bool consecutive = true;  // rows in order (no shuffling): targets and X are read in place
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t row = order[s + r];
      if (row < 0 || row >= rows)
        throw ValueError("order: row index " + std::to_string(row) + " out of range [0, " + std::to_string(rows) + ")");
      rows_[r] = row;
      consecutive = consecutive && row == rows_[0] + r;
    }
    Labels<T> yb;
    if (y.cls) {
      yb = stage_labels(y, nb, rows_.data());  // rows_ holds checked indices
    } else {
      if (consecutive) {
        yb.target = y.target + rows_[0] * D;
      } else {
        for (int64_t r = 0; r < nb; ++r) std::memcpy(tbatch_.data() + r * D, y.target + rows_[r] * D, sizeof(T) * D);
        yb.target = tbatch_.data();
      }
      yb.weight = stage_weights(y.weight, nb, rows_.data(), 0);
    }
    // Rows in order: X's batch is the slice from rows_[0], read where it is.
    const T* xb = consecutive ? stage_input(X, nb, nullptr, rows_[0]) : stage_input(X, nb, rows_.data(), 0);
    int fault = 0;
    losses[b] = guarded_step(xb, nb, yb, fault);
    res.done = b + 1;
    if (fault) {
      if (policy == OnNonFinite::Skip) {
        ++res.skipped;
        continue;
      }
      res.done = b;
      res.fault = fault;
      res.fault_batch = b;
      return res;
    }
  }
  return res;
}

template <class T>
void Model<T>::predict(const Input<T>& X, int64_t N, T* dst, int64_t batch, uint64_t cache_token) {
  const int64_t D = out_width();
  batch = std::min(batch, N);
  SparseInference inference(*this, X);
  DenseInference dense(*this, X, batch, cache_token);
  for (int64_t s = 0; s < N; s += batch) {
    const int64_t nb = std::min(batch, N - s);
    forward(stage_input(X, nb, nullptr, s), nb, FwdMode{});
    std::memcpy(dst + s * D, out(g_.output), sizeof(T) * nb * D);
  }
}

template <class T>
typename Model<T>::Evaluation Model<T>::evaluate(const Input<T>& X, int64_t N, Labels<T> y, int64_t batch,
                                                 uint64_t cache_token) {
  const int64_t D = out_width();
  batch = std::min(batch, N);
  SparseInference inference(*this, X);
  DenseInference dense(*this, X, batch, cache_token);
  Evaluation e;
  for (int64_t s = 0; s < N; s += batch) {
    const int64_t nb = std::min(batch, N - s);
    const Labels<T> yb = stage_labels(y, nb, nullptr, s, false);
    double w = static_cast<double>(nb);
    if (yb.weight) {
      w = 0;
      for (int64_t r = 0; r < nb; ++r) w += static_cast<double>(yb.weight[r]);
      if (w == 0) continue;  // rows of weight 0 count for nothing
    }
    forward(stage_input(X, nb, nullptr, s), nb, FwdMode{});
    e.loss += loss_and_seed(nb, yb, false) * w;
    e.total += w;
    if (yb.cls) e.correct += kern::count_correct<T>(out(g_.output), yb.cls, yb.weight, nb, D);
  }
  if (!(e.total > 0)) throw ValueError("sample_weight: the weights sum to 0");
  e.loss /= e.total;
  return e;
}

template <class T>
const T* Model<T>::stage_input(const Input<T>& X, int64_t N, const int64_t* src, int64_t row0) {
  const int64_t in = in_width();
  auto dense_scratch = [&] {
    const std::string what = "batch_size: a batch of " + std::to_string(N) + " rows";
    const int64_t xelems = checked_mul(N, in, what);
    if (static_cast<int64_t>(xbatch_.size()) < xelems) {
      check_allocation(checked_mul(xelems, static_cast<int64_t>(sizeof(T)), what), what);
      xbatch_.assign(static_cast<size_t>(xelems), T(0));
    }
    return xbatch_.data();
  };
  if (!X.sparse()) {
    if (!src) return X.dense + row0 * in;
    T* xb = dense_scratch();
    for (int64_t r = 0; r < N; ++r) std::memcpy(xb + r * in, X.dense + src[r] * in, sizeof(T) * in);
    return xb;
  }
  // CSR rows: each row's extent is read once from the caller's indptr and checked against the
  // arrays' lengths; indices and values are copied, and checked on the copy.
  const CsrRows<T>& c = X.csr;
  if (static_cast<int64_t>(sp_ptr_.size()) < N + 1) sp_ptr_.resize(static_cast<size_t>(N + 1));
  if (static_cast<int64_t>(sp_start_.size()) < N) sp_start_.resize(static_cast<size_t>(N));
  int64_t nnz = 0;
  for (int64_t r = 0; r < N; ++r) {
    const int64_t row = src ? src[r] : row0 + r;
    if (row < 0 || row >= c.rows) throw ValueError("X: row " + std::to_string(row) + " out of range");
    const int64_t a = c.indptr[row], b = c.indptr[row + 1];
    if (a < 0 || b < a || b > c.nnz)
      throw ValueError("X: indptr of a sparse matrix is not a valid index array at row " + std::to_string(row));
    sp_ptr_[r] = nnz;
    sp_start_[r] = a;  // the checked extent: indptr is not read again
    nnz = checked_add(nnz, b - a, "X: sparse batch");
  }
  sp_ptr_[N] = nnz;
  if (static_cast<int64_t>(sp_idx_.size()) < nnz) {
    check_allocation(checked_mul(nnz, static_cast<int64_t>(sizeof(int64_t) + sizeof(T)), "X: sparse batch"),
                     "X: sparse batch");
    sp_idx_.resize(static_cast<size_t>(nnz));
    sp_val_.resize(static_cast<size_t>(nnz));
  }
  for (int64_t r = 0; r < N; ++r) {
    const int64_t row = src ? src[r] : row0 + r;
    // indptr may have changed since it was read above: only the extent checked there is copied.
    const int64_t a = sp_start_[r], len = sp_ptr_[r + 1] - sp_ptr_[r];
    std::memcpy(sp_idx_.data() + sp_ptr_[r], c.indices + a, sizeof(int64_t) * len);
    std::memcpy(sp_val_.data() + sp_ptr_[r], c.values + a, sizeof(T) * len);
    for (int64_t p = sp_ptr_[r]; p < sp_ptr_[r + 1]; ++p)
      if (sp_idx_[p] < 0 || sp_idx_[p] >= in)
        throw ValueError("X: column index " + std::to_string(sp_idx_[p]) + " at row " + std::to_string(row) +
                         " is out of range [0, " + std::to_string(in) + ")");
  }
  if (!kern::all_finite<T>(sp_val_.data(), nnz)) throw ValueError("X: contains NaN or Inf");
  if (g_.input_linear_only) return sparse_marker();
  // Another consumer reads the input densely: this batch (only) is densified.
  T* xb = dense_scratch();
  std::fill(xb, xb + N * in, T(0));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = sp_ptr_[r]; p < sp_ptr_[r + 1]; ++p) xb[r * in + sp_idx_[p]] += sp_val_[p];
  return xb;
}

template <class T>
void Model<T>::linear_forward(int L, const T* x, int64_t N, T* y, const kern::Epilogue<T>* ep) {
  const LayerSpec& l = g_.layers[L];
  const T* W = ps_.params.data() + ps_.w_off[L];
  if (x == sparse_marker() && sp_wt_ready_)
    kern::csr_linear_forward_t<T>(y, l.out, sp_ptr_.data(), sp_idx_.data(), sp_val_.data(), N, sp_wt_[L].data(),
                                  l.out, ep);
  else if (x == sparse_marker())
    kern::csr_linear_forward<T>(y, l.out, sp_ptr_.data(), sp_idx_.data(), sp_val_.data(), N, W, l.out, l.in, ep);
  else if (packed_on_ && packed_[L].N == l.out && kern::nt_packs_b<T>(N, l.out, l.in))
    kern::gemm_nt_packed<T>(N, x, l.in, packed_[L], y, l.out, false, ep);
  else
    kern::gemm<T>(false, true, N, l.out, l.in, x, l.in, W, l.in, y, l.out, false, ep);
}

namespace {
std::atomic<bool> g_packed_weights{env_switch_on("LAYERPROP_PACKED_WEIGHTS")};
}  // namespace

void set_packed_weights(bool on) { g_packed_weights = on; }

template <class T>
typename Model<T>::PackedStats Model<T>::packed_stats() const {
  PackedStats st;
  st.builds = packed_builds_;
  st.uses = packed_uses_;
  st.valid = packed_version_ != 0 && packed_version_ == param_version();
  for (const auto& p : packed_) st.bytes += static_cast<int64_t>(p.data.size() * sizeof(T));
  return st;
}

template <class T>
Model<T>::DenseInference::DenseInference(Model<T>& m, const Input<T>& X, int64_t rows, uint64_t token) : m_(m) {
  m.packed_on_ = false;
  if (X.sparse() || rows <= 0 || !g_packed_weights) return;
  auto forget = [&m] {
    m.packed_version_ = 0;
    for (auto& p : m.packed_) p.N = 0;
  };
  const uint64_t v = m.param_version();
  if (m.packed_version_ != v) forget();  // written since: what is packed is stale
  if (m.packed_.size() != m.g_.layers.size()) m.packed_.resize(m.g_.layers.size());
  // Only a call whose token is the current version may pack (and so keep) weights: the
  // caller saw no view of the parameters outside the model, and any view handed out since,
  // or any write here, has bumped the version.
  const bool may_pack = token != 0 && token == v;
  if (!may_pack && m.packed_version_ == 0)  // stale and cannot be rebuilt: give the memory back
    for (auto& p : m.packed_) Buffer<T>().swap(p.data);
  bool any = false, built = false;
  for (size_t L = 0; L < m.g_.layers.size(); ++L) {
    const LayerSpec& l = m.g_.layers[L];
    if (l.kind != LayerKind::Linear || !kern::nt_packs_b<T>(rows, l.out, l.in)) continue;
    if (m.packed_[L].N == 0 && may_pack) {
      const std::string what = "the packed weights of layer " + std::to_string(L);
      check_allocation(checked_mul(checked_mul(l.out + 16, l.in, what), static_cast<int64_t>(sizeof(T)), what), what);
      kern::pack_nt<T>(m.packed_[L], m.ps_.params.data() + m.ps_.w_off[L], l.in, l.out, l.in);
      built = true;
    }
    any = any || m.packed_[L].N != 0;
  }
  if (!any) return;
  if (built) {
    if (m.param_version() != v) {  // a view was handed out while packing: keep nothing
      forget();
      return;
    }
    m.packed_version_ = v;
    ++m.packed_builds_;
  }
  ++m.packed_uses_;
  m.packed_on_ = true;
}

template <class T>
Model<T>::SparseInference::SparseInference(Model<T>& m, const Input<T>& X) : m_(m) {
  // Worth it when the call's entries are several times the columns: the weights are then
  // transposed once for all its batches instead of gathered from per batch.
  if (!X.sparse() || !m.g_.input_linear_only || X.csr.nnz < 4 * m.in_width()) return;
  if (m.sp_wt_.size() != m.g_.layers.size()) m.sp_wt_.assign(m.g_.layers.size(), Buffer<T>());
  for (int c : m.g_.consumers[0]) {
    const int L = m.g_.nodes[c].layer;
    const LayerSpec& l = m.g_.layers[L];
    const std::string what = "X: the transposed weight of layer " + std::to_string(L);
    const int64_t elems = checked_mul(l.in, l.out, what);
    if (static_cast<int64_t>(m.sp_wt_[L].size()) < elems) {
      check_allocation(checked_mul(elems, static_cast<int64_t>(sizeof(T)), what), what);
      m.sp_wt_[L].resize(static_cast<size_t>(elems));
    }
    kern::transpose<T>(m.sp_wt_[L].data(), m.ps_.params.data() + m.ps_.w_off[L], l.out, l.in);
  }
  m.sp_wt_ready_ = true;
}

template <class T>
void Model<T>::linear_weight_grad(int L, const T* x, int64_t N, const T* dz, bool accumulate) {
  const LayerSpec& l = g_.layers[L];
  T* dW = ps_.grads.data() + ps_.w_off[L];
  if (x == sparse_marker())
    kern::csr_weight_grad<T>(dW, dz, l.out, sp_ptr_.data(), sp_idx_.data(), sp_val_.data(), N, l.out, l.in,
                             accumulate);
  else
    kern::gemm<T>(true, false, l.out, l.in, N, dz, l.out, x, l.in, dW, l.in, accumulate);
}

template class Model<float>;
template class Model<double>;

}  // namespace lp
