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

namespace {
std::string node_str(int i) { return "node " + std::to_string(i); }

// The settings an activation reads, checked by name: finite, and Softplus' beta > 0.
void check_act_settings(const NodeSpec& s, const std::string& where) {
  auto finite = [&](const char* name, double v) {
    if (!std::isfinite(v))
      throw ValueError("graph: " + where + ": " + name + " must be a finite number, got " + std::to_string(v));
  };
  if (s.act == Act::LeakyReLU) finite("negative_slope", s.act_settings.negative_slope);
  if (s.act == Act::ELU) finite("alpha", s.act_settings.alpha);
  if (s.act == Act::Softplus) {
    finite("beta", s.act_settings.beta);
    finite("threshold", s.act_settings.threshold);
    if (!(s.act_settings.beta > 0))
      throw ValueError("graph: " + where + ": beta must be > 0, got " + std::to_string(s.act_settings.beta));
  }
}

}  // namespace

template <class T>
Model<T>::Model(std::vector<LayerSpec> layers, std::vector<NodeSpec> nodes, int output)
    : layers_(std::move(layers)), nodes_(std::move(nodes)), output_(output) {
  const int n = static_cast<int>(nodes_.size());
  if (n < 2 || nodes_[0].kind != NodeKind::Input)
    throw ValueError("graph: node 0 must be the input and at least one layer must follow");
  if (output_ < 1 || output_ >= n) throw ValueError("graph: output node out of range");
  for (auto& l : layers_) {
    if (l.in < 1 || l.out < 1) throw ValueError("graph: layer sizes must be >= 1");
    if (l.kind != LayerKind::Linear && l.in != l.out) throw ValueError("graph: a norm layer keeps its width");
    if (l.kind != LayerKind::Linear && !(l.eps > 0)) throw ValueError("graph: eps must be > 0");
    if (l.kind == LayerKind::BatchNorm && !(l.momentum >= 0 && l.momentum <= 1))
      throw ValueError("graph: momentum must be in [0, 1]");
  }
  consumers_.assign(n, {});
  needs_grad_.assign(n, 0);
  fused_into_.assign(n, -1);
  fused_.assign(n, 0);
  layer_nodes_.assign(layers_.size(), {});
  if (nodes_[0].width < 1) throw ValueError("graph: input width must be >= 1");
  for (int i = 1; i < n; ++i) {
    NodeSpec& s = nodes_[i];
    if (s.kind == NodeKind::Input) throw ValueError("graph: only one input node is supported");
    if (s.inputs.empty()) throw ValueError("graph: " + node_str(i) + " has no inputs");
    for (int j : s.inputs) {
      if (j < 0 || j >= i) throw ValueError("graph: nodes must be in topological order");
      consumers_[j].push_back(i);
      needs_grad_[i] |= needs_grad_[j];
    }
    auto w = [&](int k) { return nodes_[s.inputs[k]].width; };
    switch (s.kind) {
      case NodeKind::Linear:
      case NodeKind::BatchNorm:
      case NodeKind::LayerNorm: {
        if (s.layer < 0 || s.layer >= static_cast<int>(layers_.size()) || s.inputs.size() != 1)
          throw ValueError("graph: bad layer " + node_str(i));
        const LayerSpec& l = layers_[s.layer];
        const LayerKind want = s.kind == NodeKind::Linear ? LayerKind::Linear
                               : s.kind == NodeKind::BatchNorm ? LayerKind::BatchNorm : LayerKind::LayerNorm;
        if (l.kind != want) throw ValueError("graph: " + node_str(i) + " refers to a layer of another kind");
        if (w(0) != l.in || s.width != l.out)
          throw ValueError("graph: " + node_str(i) + " expects " + std::to_string(l.in) +
                           " input features, gets " + std::to_string(w(0)));
        layer_nodes_[s.layer].push_back(i);
        if (s.kind == NodeKind::Linear || l.bias || l.kind == LayerKind::LayerNorm) needs_grad_[i] = 1;
        break;
      }
      case NodeKind::Dropout:
        if (!(s.p >= 0 && s.p <= 1)) throw ValueError("graph: dropout p must be in [0, 1]");
        [[fallthrough]];
      case NodeKind::Activation:
        if (s.kind == NodeKind::Activation) check_act_settings(s, node_str(i));
      case NodeKind::Add:
        for (size_t k = 0; k < s.inputs.size(); ++k)
          if (w(k) != s.width) throw ValueError("graph: width mismatch at " + node_str(i));
        if ((s.kind == NodeKind::Activation || s.kind == NodeKind::Dropout) && s.inputs.size() != 1)
          throw ValueError("graph: activation and dropout take one input");
        break;
      case NodeKind::Concat: {
        int64_t tot = 0;
        for (size_t k = 0; k < s.inputs.size(); ++k) tot += w(k);
        if (tot != s.width) throw ValueError("graph: concat width mismatch at " + node_str(i));
        break;
      }
      default: break;
    }
  }
  input_linear_only_ = true;
  for (int c : consumers_[0]) input_linear_only_ = input_linear_only_ && nodes_[c].kind == NodeKind::Linear;
  // Linear -> activation pairs where the activation is the Linear's only consumer: the
  // forward GEMM applies bias and activation in its store.
  for (int i = 1; i < n; ++i)
    if (nodes_[i].kind == NodeKind::Linear && consumers_[i].size() == 1 &&
        nodes_[consumers_[i][0]].kind == NodeKind::Activation) {
      fused_into_[i] = consumers_[i][0];
      fused_[consumers_[i][0]] = 1;
    }
  // Parameter store: per layer, weight then bias; buffers: BatchNorm running statistics.
  int64_t off = 0, boff = 0;
  layer_tensors_.assign(layers_.size(), {});
  for (size_t L = 0; L < layers_.size(); ++L) {
    const LayerSpec& l = layers_[L];
    const int li = static_cast<int>(L);
    const bool has_w = l.kind == LayerKind::Linear || l.kind == LayerKind::LayerNorm || l.bias;
    const bool has_b = l.kind == LayerKind::LayerNorm || l.bias;
    w_off_.push_back(has_w ? off : -1);
    if (has_w) {
      layer_tensors_[L].push_back(static_cast<int>(tensors_.size()));
      if (l.kind == LayerKind::Linear) tensors_.push_back({li, "weight", off, l.out, l.in});
      else tensors_.push_back({li, "weight", off, l.out, 0});
      const std::string what = "layer " + std::to_string(L) + " (" + std::to_string(l.in) + " -> " +
                               std::to_string(l.out) + " features)";
      off = checked_add(off, l.kind == LayerKind::Linear ? checked_mul(l.out, l.in, what) : l.out, what);
    }
    b_off_.push_back(has_b ? off : -1);
    if (has_b) {
      layer_tensors_[L].push_back(static_cast<int>(tensors_.size()));
      tensors_.push_back({li, "bias", off, l.out, 0});
      off += l.out;
    }
    if (l.kind == LayerKind::BatchNorm) {
      rm_off_.push_back(boff);
      buffer_tensors_.push_back({li, "running_mean", boff, l.out, 0});
      boff += l.out;
      rv_off_.push_back(boff);
      buffer_tensors_.push_back({li, "running_var", boff, l.out, 0});
      boff += l.out;
    } else {
      rm_off_.push_back(-1);
      rv_off_.push_back(-1);
    }
  }
  // Parameters and gradients: refused before anything is allocated if this machine cannot hold
  // them (the message names the largest layer).
  {
    int64_t big = -1, big_size = 0;
    for (size_t L = 0; L < layers_.size(); ++L)
      if (layers_[L].kind == LayerKind::Linear && layers_[L].out * layers_[L].in > big_size) {
        big = static_cast<int64_t>(L);
        big_size = layers_[L].out * layers_[L].in;
      }
    std::string what = "model parameters and gradients (" + std::to_string(off) + " parameters";
    if (big >= 0)
      what += "; the largest, layer " + std::to_string(big) + ", is " + std::to_string(layers_[big].in) + " -> " +
              std::to_string(layers_[big].out) + " features";
    check_allocation(checked_mul(checked_mul(off, 2, what), static_cast<int64_t>(sizeof(T)), what), what + ")");
  }
  params_.assign(static_cast<size_t>(off), T(0));
  grads_.assign(static_cast<size_t>(off), T(0));
  buffers_.assign(static_cast<size_t>(boff), T(0));
  for (size_t L = 0; L < layers_.size(); ++L)
    if (rv_off_[L] >= 0) std::fill_n(buffers_.data() + rv_off_[L], layers_[L].out, T(1));
  optim_.resize_steps(tensors_.size());
  outs_.resize(n);
  gouts_.resize(n);
  aux_.resize(n);
  mask_keys_.assign(n, 0);
  written_.assign(n, 0);
  pwritten_.assign(layers_.size(), 0);
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
  optim_.configure(opt, static_cast<int64_t>(params_.size()), tensors_.size());
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
  for (size_t L = 0; L < layers_.size(); ++L)
    if (!layer_tensors_[L].empty() && !layer_nodes_[L].empty()) units.push_back(static_cast<int>(L));
  // Topological position of a unit: its first use.
  std::stable_sort(units.begin(), units.end(), [&](int a, int b) {
    return layer_nodes_[a].front() < layer_nodes_[b].front();
  });
  return units;
}

template <class T>
void Model<T>::ensure_capacity(int64_t N) {
  if (N <= cap_) return;
  const int n = static_cast<int>(nodes_.size());
  // The workspace of a batch of N rows, checked before any of it is allocated.
  const std::string what = "X: a batch of " + std::to_string(N) + " rows";
  int64_t elems = N;  // row losses
  for (int i = 1; i < n; ++i) {
    const int64_t per = 1 + (needs_grad_[i] ? 1 : 0) + (nodes_[i].kind == NodeKind::Dropout ? 1 : 0);
    elems = checked_add(elems, checked_mul(checked_mul(N, nodes_[i].width, what), per, what), what);
  }
  check_allocation(checked_mul(elems, static_cast<int64_t>(sizeof(T)), what), what + " (workspace)");
  for (int i = 1; i < n; ++i) {
    const size_t sz = static_cast<size_t>(N * nodes_[i].width);
    outs_[i].assign(sz, T(0));
    if (needs_grad_[i]) gouts_[i].assign(sz, T(0));
    if (nodes_[i].kind == NodeKind::Dropout) aux_[i].assign(sz, T(0));
    if (nodes_[i].kind == NodeKind::BatchNorm) aux_[i].assign(2 * nodes_[i].width, T(0));
    if (nodes_[i].kind == NodeKind::LayerNorm) aux_[i].assign(2 * N, T(0));
  }
  row_loss_.assign(static_cast<size_t>(N), T(0));
  cap_ = N;
}

template <class T>
void Model<T>::layer_forward(int i, int64_t N, const FwdMode& mode) {
  const NodeSpec& s = nodes_[i];
  const int64_t w = s.width;
  const LayerSpec& l = layers_[s.layer];
  const T* x = out(s.inputs[0]);
  const T* gamma = w_off_[s.layer] >= 0 && l.kind != LayerKind::Linear ? params_.data() + w_off_[s.layer] : nullptr;
  const T* beta = b_off_[s.layer] >= 0 ? params_.data() + b_off_[s.layer] : nullptr;
  T* a = aux_[i].data();
  if (s.kind == NodeKind::BatchNorm) {
    if (mode.training) {
      if (N < 2)
        throw ValueError("X: BatchNorm1d needs more than 1 sample per batch in training mode, got 1 "
                         "(use a larger batch or model.eval())");
      T* rm = mode.update_stats ? buffers_.data() + rm_off_[s.layer] : nullptr;
      T* rv = mode.update_stats ? buffers_.data() + rv_off_[s.layer] : nullptr;
      kern::batchnorm_forward_train<T>(outs_[i].data(), a, a + w, x, gamma, beta, N, w, l.eps, rm, rv, l.momentum);
    } else {
      kern::batchnorm_forward_eval<T>(outs_[i].data(), a, a + w, x, gamma, beta, N, w, l.eps,
                                      buffers_.data() + rm_off_[s.layer], buffers_.data() + rv_off_[s.layer]);
    }
  } else {
    kern::layernorm_forward<T>(outs_[i].data(), a, a + N, x, gamma, beta, N, w, l.eps);
  }
}

template <class T>
void Model<T>::forward(const T* X, int64_t N, FwdMode mode, int from) {
  ensure_capacity(N);
  x_ = X;
  // A BatchNorm batch of 1 is refused before anything changes.
  if (mode.training && N < 2)
    for (int i = from; i <= output_; ++i)
      if (nodes_[i].kind == NodeKind::BatchNorm)
        throw ValueError("X: BatchNorm1d needs more than 1 sample per batch in training mode, got 1 "
                         "(use a larger batch or model.eval())");
  for (int i = from; i <= output_; ++i) {
    const NodeSpec& s = nodes_[i];
    const int64_t w = s.width;
    ops_.forward += 1;
    switch (s.kind) {
      case NodeKind::Linear: {
        const LayerSpec& l = layers_[s.layer];
        kern::Epilogue<T> ep;
        ep.bias = b_off_[s.layer] >= 0 ? params_.data() + b_off_[s.layer] : nullptr;
        if (fused_into_[i] >= 0) {
          const NodeSpec& a = nodes_[fused_into_[i]];
          ep.act = a.act;
          ep.params = kern::ActParams<T>(a.act_settings);
          ep.act_out = outs_[fused_into_[i]].data();
          ep.ld_act = w;
        }
        (void)l;
        linear_forward(s.layer, out(s.inputs[0]), N, outs_[i].data(), &ep);
        break;
      }
      case NodeKind::BatchNorm:
      case NodeKind::LayerNorm: layer_forward(i, N, mode); break;
      case NodeKind::Activation:
        if (!fused_[i]) kern::act_forward<T>(outs_[i].data(), out(s.inputs[0]), N * w, s.act, kern::ActParams<T>(s.act_settings));
        else ops_.forward -= 1;  // done by its Linear
        break;
      case NodeKind::Dropout:
        if (mode.training && s.p > 0) {
          if (!mode.reuse_masks)
            mask_keys_[i] = kern::mix64(seed_ ^ kern::mix64(draws_++ * 0x100000001B3ull + static_cast<uint64_t>(i)));
          kern::dropout_forward<T>(outs_[i].data(), aux_[i].data(), out(s.inputs[0]), N * w, s.p,
                             mask_keys_[i], mode.reuse_masks);
        } else {
          std::memcpy(outs_[i].data(), out(s.inputs[0]), sizeof(T) * N * w);
        }
        break;
      case NodeKind::Add:
        kern::add_into<T>(outs_[i].data(), out(s.inputs[0]), N * w, false);
        for (size_t k = 1; k < s.inputs.size(); ++k)
          kern::add_into<T>(outs_[i].data(), out(s.inputs[k]), N * w, true);
        break;
      case NodeKind::Concat: {
        int64_t c0 = 0;
        for (int j : s.inputs) {
          kern::concat_forward<T>(outs_[i].data(), out(j), N, w, c0, nodes_[j].width);
          c0 += nodes_[j].width;
        }
        break;
      }
      default: break;
    }
  }
}

template <class T>
double Model<T>::loss_and_seed(int64_t N, Labels<T> y, bool want_grad) {
  const T* z = out(output_);
  T* g = want_grad ? gouts_[output_].data() : nullptr;
  const int64_t D = out_width();
  switch (loss_) {
    case LossKind::CrossEntropy: return kern::cross_entropy<T>(g, row_loss_.data(), z, y.cls, y.weight, N, D);
    case LossKind::MSE: return kern::mse<T>(g, row_loss_.data(), z, y.target, y.weight, N, D);
    case LossKind::Poisson: return kern::poisson_nll<T>(g, row_loss_.data(), z, y.target, y.weight, N, D);
    case LossKind::BCEWithLogits:
    default: return kern::bce_with_logits<T>(g, row_loss_.data(), z, y.target, y.weight, N, D);
  }
}

template <class T>
void Model<T>::norm_backward(int i, int64_t N, bool param_grads) {
  const NodeSpec& s = nodes_[i];
  const int L = s.layer;
  const int64_t w = s.width;
  const int j = s.inputs[0];
  const bool want_dx = needs_grad_[j];
  T* dx = want_dx ? gouts_[j].data() : nullptr;
  const bool acc_dx = want_dx && written_[j];
  T* dgamma = param_grads && w_off_[L] >= 0 ? grads_.data() + w_off_[L] : nullptr;
  T* dbeta = param_grads && b_off_[L] >= 0 ? grads_.data() + b_off_[L] : nullptr;
  const T* gamma = w_off_[L] >= 0 ? params_.data() + w_off_[L] : nullptr;
  const T* a = aux_[i].data();
  if (s.kind == NodeKind::BatchNorm)
    kern::batchnorm_backward<T>(dx, dgamma, dbeta, gouts_[i].data(), out(j), a, a + w, gamma, N, w,
                                training_, acc_dx, pwritten_[L]);
  else
    kern::layernorm_backward<T>(dx, dgamma, dbeta, gouts_[i].data(), out(j), a, a + N, gamma, N, w,
                                acc_dx, pwritten_[L]);
  if (dgamma || dbeta) pwritten_[L] = 1;
  if (want_dx) written_[j] = 1;
}

template <class T>
void Model<T>::backward(int64_t N, int down_to, int only_layer) {
  std::fill(written_.begin(), written_.end(), 0);
  std::fill(pwritten_.begin(), pwritten_.end(), 0);
  written_[output_] = 1;
  // An input below `down_to` takes no gradient: its producers are not revisited.
  auto wants = [&](int j) { return needs_grad_[j] && j >= down_to; };
  for (int i = output_; i >= down_to; --i) {
    if (!written_[i] || !needs_grad_[i]) continue;
    const NodeSpec& s = nodes_[i];
    const T* dy = gouts_[i].data();
    const int64_t w = s.width;
    ops_.backward += 1;
    switch (s.kind) {
      case NodeKind::Linear: {
        const int L = s.layer;
        const LayerSpec& l = layers_[L];
        const int j = s.inputs[0];
        if (only_layer < 0 || only_layer == L) {
          const bool acc = pwritten_[L];
          // dw (OUT,IN) = dz^T (OUT,N) . x (N,IN); db = column sums of dz
          linear_weight_grad(L, out(j), N, dy, acc);
          if (b_off_[L] >= 0) kern::colsum<T>(grads_.data() + b_off_[L], dy, N, l.out, acc);
          pwritten_[L] = 1;
        }
        if (wants(j)) {  // dx (N,IN) = dz (N,OUT) . w (OUT,IN)
          kern::gemm<T>(false, false, N, l.in, l.out, dy, l.out, params_.data() + w_off_[L], l.in,
                        gouts_[j].data(), l.in, written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::BatchNorm:
      case NodeKind::LayerNorm: {
        const bool pg = only_layer < 0 || only_layer == s.layer;
        if (!wants(s.inputs[0])) {
          // parameter gradients only
          const int j = s.inputs[0];
          const char keep = needs_grad_[j];
          needs_grad_[j] = 0;
          if (pg) norm_backward(i, N, true);
          needs_grad_[j] = keep;
        } else {
          norm_backward(i, N, pg);
        }
        break;
      }
      case NodeKind::Activation: {
        const int j = s.inputs[0];
        if (wants(j)) {
          kern::act_backward<T>(gouts_[j].data(), dy, out(j), out(i), N * w, s.act,
                                kern::ActParams<T>(s.act_settings), written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Dropout: {
        const int j = s.inputs[0];
        if (wants(j)) {
          if (training_ && s.p > 0) kern::mul_into<T>(gouts_[j].data(), dy, aux_[i].data(), N * w, written_[j]);
          else kern::add_into<T>(gouts_[j].data(), dy, N * w, written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Add:
        for (int j : s.inputs)
          if (wants(j)) {
            kern::add_into<T>(gouts_[j].data(), dy, N * w, written_[j]);
            written_[j] = 1;
          }
        break;
      case NodeKind::Concat: {
        int64_t c0 = 0;
        for (int j : s.inputs) {
          const int64_t wj = nodes_[j].width;
          if (wants(j)) {
            kern::concat_backward<T>(gouts_[j].data(), dy, N, w, c0, wj, written_[j]);
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
  for (size_t L = 0; L < layers_.size(); ++L)
    if (!pwritten_[L])
      for (int t : layer_tensors_[L]) std::fill_n(grads_.data() + tensors_[t].offset, tensors_[t].size(), T(0));
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
  const bool stats = training_ && update_stats && !buffers_.empty();
  if (stats) stats_backup_.assign(buffers_.begin(), buffers_.end());
  const uint64_t draws = draws_;
  forward(X, N, FwdMode{training_, training_ && update_stats, false});
  const double loss = loss_and_seed(N, y, true);
  backward(N);
  grads_fault_ = !std::isfinite(loss) ? 1 : !kern::all_finite<T>(grads_.data(), static_cast<int64_t>(grads_.size())) ? 2 : 0;
  grads_ready_ = grads_fault_ == 0;
  if (grads_fault_) {  // the forward's side effects are put back; the gradients stay to be seen
    if (stats) std::copy(stats_backup_.begin(), stats_backup_.end(), buffers_.begin());
    draws_ = draws;
  }
  return loss;
}

template <class T>
double Model<T>::loss_only(const Input<T>& X, int64_t N, Labels<T> y) {
  y = stage_labels(y, N);
  forward(stage_input(X, N, nullptr, 0), N, FwdMode{training_, false, false});
  return loss_and_seed(N, y, false);
}

template <class T>
void Model<T>::apply_layer(int L, double lr, double l2_weights) {
  for (int t : layer_tensors_[L]) {
    const bool weight = layers_[L].kind == LayerKind::Linear && tensors_[t].name == "weight";
    optim_.step(t, OptTensor{tensors_[t].offset, tensors_[t].size()}, params_.data(), grads_.data(), lr,
                weight ? l2_weights : 0.0);
  }
}

template <class T>
void Model<T>::apply_gradients(double l2_weights, double grad_scale) {
  if (grad_scale != 1.0) {
    const T c = static_cast<T>(grad_scale);
    for (T& g : grads_) g *= c;
  }
  if (clip_.active()) kern::clip_gradients<T>(clip_, grads_.data(), static_cast<int64_t>(grads_.size()));
  for (size_t L = 0; L < layers_.size(); ++L) apply_layer(static_cast<int>(L), -1.0, l2_weights);
  grads_ready_ = false;
}

template <class T>
double Model<T>::guarded_step(const T* X, int64_t N, Labels<T> y, int& fault) {
  fault = 0;
  if (!schedule_->updates_inside_step())  // it checks the gradients before it applies them
    return schedule_->step(*this, X, N, y, fault);
  // The schedule updates inside the step: everything it may change is kept aside (a copy is
  // small next to its several passes) and put back if the step went non-finite.
  params_backup_.assign(params_.begin(), params_.end());
  optim_.backup();  // every named state slot and the step counts
  stats_backup_.assign(buffers_.begin(), buffers_.end());
  const uint64_t draws = draws_;
  const double loss = schedule_->step(*this, X, N, y, fault);
  if (!fault)
    fault = !std::isfinite(loss) ? 1 : !kern::all_finite<T>(params_.data(), static_cast<int64_t>(params_.size())) ? 2 : 0;
  grads_fault_ = fault;
  grads_ready_ = false;
  if (fault) {
    std::copy(params_backup_.begin(), params_backup_.end(), params_.begin());
    optim_.restore();
    std::copy(stats_backup_.begin(), stats_backup_.end(), buffers_.begin());
    draws_ = draws;
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
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t row = order[s + r];
      if (row < 0 || row >= rows)
        throw ValueError("order: row index " + std::to_string(row) + " out of range [0, " + std::to_string(rows) + ")");
      rows_[r] = row;
      if (y.target) std::memcpy(tbatch_.data() + r * D, y.target + row * D, sizeof(T) * D);
    }
    Labels<T> yb;
    if (y.cls) {
      yb = stage_labels(y, nb, rows_.data());  // rows_ holds checked indices
    } else {
      yb.target = tbatch_.data();
      yb.weight = stage_weights(y.weight, nb, rows_.data(), 0);
    }
    const T* xb = stage_input(X, nb, rows_.data(), 0);
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
void Model<T>::predict(const Input<T>& X, int64_t N, T* dst, int64_t batch) {
  const int64_t D = out_width();
  batch = std::min(batch, N);
  SparseInference inference(*this, X);
  for (int64_t s = 0; s < N; s += batch) {
    const int64_t nb = std::min(batch, N - s);
    forward(stage_input(X, nb, nullptr, s), nb, FwdMode{});
    std::memcpy(dst + s * D, out(output_), sizeof(T) * nb * D);
  }
}

template <class T>
typename Model<T>::Evaluation Model<T>::evaluate(const Input<T>& X, int64_t N, Labels<T> y, int64_t batch) {
  const int64_t D = out_width();
  batch = std::min(batch, N);
  SparseInference inference(*this, X);
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
    if (yb.cls) e.correct += kern::count_correct<T>(out(output_), yb.cls, yb.weight, nb, D);
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
  if (input_linear_only_) return sparse_marker();
  // Another consumer reads the input densely: this batch (only) is densified.
  T* xb = dense_scratch();
  std::fill(xb, xb + N * in, T(0));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t p = sp_ptr_[r]; p < sp_ptr_[r + 1]; ++p) xb[r * in + sp_idx_[p]] += sp_val_[p];
  return xb;
}

template <class T>
void Model<T>::linear_forward(int L, const T* x, int64_t N, T* y, const kern::Epilogue<T>* ep) {
  const LayerSpec& l = layers_[L];
  const T* W = params_.data() + w_off_[L];
  if (x == sparse_marker() && sp_wt_ready_)
    kern::csr_linear_forward_t<T>(y, l.out, sp_ptr_.data(), sp_idx_.data(), sp_val_.data(), N, sp_wt_[L].data(),
                                  l.out, ep);
  else if (x == sparse_marker())
    kern::csr_linear_forward<T>(y, l.out, sp_ptr_.data(), sp_idx_.data(), sp_val_.data(), N, W, l.out, l.in, ep);
  else
    kern::gemm<T>(false, true, N, l.out, l.in, x, l.in, W, l.in, y, l.out, false, ep);
}

template <class T>
Model<T>::SparseInference::SparseInference(Model<T>& m, const Input<T>& X) : m_(m) {
  // Worth it when the call's entries are several times the columns: the weights are then
  // transposed once for all its batches instead of gathered from per batch.
  if (!X.sparse() || !m.input_linear_only_ || X.csr.nnz < 4 * m.in_width()) return;
  if (m.sp_wt_.size() != m.layers_.size()) m.sp_wt_.assign(m.layers_.size(), Buffer<T>());
  for (int c : m.consumers_[0]) {
    const int L = m.nodes_[c].layer;
    const LayerSpec& l = m.layers_[L];
    const std::string what = "X: the transposed weight of layer " + std::to_string(L);
    const int64_t elems = checked_mul(l.in, l.out, what);
    if (static_cast<int64_t>(m.sp_wt_[L].size()) < elems) {
      check_allocation(checked_mul(elems, static_cast<int64_t>(sizeof(T)), what), what);
      m.sp_wt_[L].resize(static_cast<size_t>(elems));
    }
    kern::transpose<T>(m.sp_wt_[L].data(), m.params_.data() + m.w_off_[L], l.out, l.in);
  }
  m.sp_wt_ready_ = true;
}

template <class T>
void Model<T>::linear_weight_grad(int L, const T* x, int64_t N, const T* dz, bool accumulate) {
  const LayerSpec& l = layers_[L];
  T* dW = grads_.data() + w_off_[L];
  if (x == sparse_marker())
    kern::csr_weight_grad<T>(dW, dz, l.out, sp_ptr_.data(), sp_idx_.data(), sp_val_.data(), N, l.out, l.in,
                             accumulate);
  else
    kern::gemm<T>(true, false, l.out, l.in, N, dz, l.out, x, l.in, dW, l.in, accumulate);
}

template class Model<float>;
template class Model<double>;

}  // namespace lp
