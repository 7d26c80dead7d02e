#include "layerprop/model.hpp"

#include <algorithm>
#include <cstring>

#include "layerprop/eltwise.hpp"
#include "layerprop/gemm.hpp"
#include "layerprop/loss.hpp"
#include "layerprop/runtime.hpp"

namespace lp {

template <class T>
Model<T>::Model(std::vector<LinearSpec> layers, std::vector<NodeSpec> nodes, int output)
    : layers_(std::move(layers)), nodes_(std::move(nodes)), output_(output) {
  const int n = static_cast<int>(nodes_.size());
  if (n < 2 || nodes_[0].kind != NodeKind::Input)
    throw ValueError("graph: node 0 must be the input and at least one layer must follow");
  if (output_ < 1 || output_ >= n) throw ValueError("graph: output node out of range");
  for (auto& l : layers_)
    if (l.in < 1 || l.out < 1) throw ValueError("graph: Linear sizes must be >= 1");
  consumers_.assign(n, {});
  needs_grad_.assign(n, 0);
  fused_into_.assign(n, -1);
  fused_.assign(n, 0);
  if (nodes_[0].width < 1) throw ValueError("graph: input width must be >= 1");
  for (int i = 1; i < n; ++i) {
    NodeSpec& s = nodes_[i];
    if (s.kind == NodeKind::Input) throw ValueError("graph: only one input node is supported");
    if (s.inputs.empty()) throw ValueError("graph: node " + std::to_string(i) + " has no inputs");
    for (int j : s.inputs) {
      if (j < 0 || j >= i) throw ValueError("graph: nodes must be in topological order");
      consumers_[j].push_back(i);
      needs_grad_[i] |= needs_grad_[j];
    }
    auto w = [&](int k) { return nodes_[s.inputs[k]].width; };
    switch (s.kind) {
      case NodeKind::Linear: {
        if (s.layer < 0 || s.layer >= static_cast<int>(layers_.size()) || s.inputs.size() != 1)
          throw ValueError("graph: bad Linear node " + std::to_string(i));
        const LinearSpec& l = layers_[s.layer];
        if (w(0) != l.in || s.width != l.out)
          throw ValueError("graph: Linear node " + std::to_string(i) + " expects " +
                           std::to_string(l.in) + " input features, gets " + std::to_string(w(0)));
        needs_grad_[i] = 1;
        break;
      }
      case NodeKind::Dropout:
        if (!(s.slope >= 0 && s.slope <= 1)) throw ValueError("graph: dropout p must be in [0, 1]");
        [[fallthrough]];
      case NodeKind::Activation:
      case NodeKind::Add:
        for (size_t k = 0; k < s.inputs.size(); ++k)
          if (w(k) != s.width) throw ValueError("graph: width mismatch at node " + std::to_string(i));
        if ((s.kind == NodeKind::Activation || s.kind == NodeKind::Dropout) && s.inputs.size() != 1)
          throw ValueError("graph: activation and dropout take one input");
        break;
      case NodeKind::Concat: {
        int64_t tot = 0;
        for (size_t k = 0; k < s.inputs.size(); ++k) tot += w(k);
        if (tot != s.width) throw ValueError("graph: concat width mismatch at node " + std::to_string(i));
        break;
      }
      default: break;
    }
  }
  // Linear -> activation pairs where the activation is the Linear's only consumer: the
  // forward GEMM applies bias and activation in its store.
  for (int i = 1; i < n; ++i)
    if (nodes_[i].kind == NodeKind::Linear && consumers_[i].size() == 1 &&
        nodes_[consumers_[i][0]].kind == NodeKind::Activation) {
      fused_into_[i] = consumers_[i][0];
      fused_[consumers_[i][0]] = 1;
    }
  // Parameter store: per layer, weight (out, in) then bias (out).
  int64_t off = 0;
  for (size_t L = 0; L < layers_.size(); ++L) {
    const LinearSpec& l = layers_[L];
    w_off_.push_back(off);
    tensors_.push_back({static_cast<int>(L), false, off, l.out, l.in});
    off += l.out * l.in;
    if (l.bias) {
      b_off_.push_back(off);
      tensors_.push_back({static_cast<int>(L), true, off, l.out, 1});
      off += l.out;
    } else {
      b_off_.push_back(-1);
    }
  }
  params_.assign(static_cast<size_t>(off), T(0));
  grads_.assign(static_cast<size_t>(off), T(0));
  steps_.assign(tensors_.size(), 0);
  outs_.resize(n);
  gouts_.resize(n);
  masks_.resize(n);
  written_.assign(n, 0);
  pwritten_.assign(layers_.size(), 0);
}

template <class T>
void Model<T>::compile(LossKind loss, const kern::OptConfig& opt) {
  const int slots = opt.state_slots();
  state1_.assign(slots >= 1 ? params_.size() : 0, T(0));
  state2_.assign(slots >= 2 ? params_.size() : 0, T(0));
  std::fill(steps_.begin(), steps_.end(), 0);
  loss_ = loss;
  opt_ = opt;
  compiled_ = true;
  grads_ready_ = false;
}

template <class T>
void Model<T>::ensure_capacity(int64_t N) {
  if (N <= cap_) return;
  const int n = static_cast<int>(nodes_.size());
  for (int i = 1; i < n; ++i) {
    const size_t sz = static_cast<size_t>(N * nodes_[i].width);
    outs_[i].assign(sz, T(0));
    if (needs_grad_[i]) gouts_[i].assign(sz, T(0));
    if (nodes_[i].kind == NodeKind::Dropout) masks_[i].assign(sz, T(0));
  }
  row_loss_.assign(static_cast<size_t>(N), T(0));
  cap_ = N;
}

namespace {
// splitmix64 finalizer: a counter-based generator, one independent draw per element.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// mask[i] = 0 with probability p, else 1/(1-p); y = x * mask.
template <class T>
void dropout_forward(T* y, T* mask, const T* x, int64_t n, double p, uint64_t key) {
  const T scale = p < 1 ? T(1.0 / (1.0 - p)) : T(0);
  parallel_range(n, n, int64_t(1) << 16, [&](int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const double u = static_cast<double>(mix64(key ^ mix64(static_cast<uint64_t>(i))) >> 11) * 0x1.0p-53;
    mask[i] = u >= p ? scale : T(0);
    y[i] = x[i] * mask[i];
  }
  });
}
}  // namespace

template <class T>
void Model<T>::forward(const T* X, int64_t N, bool training) {
  ensure_capacity(N);
  x_ = X;
  masked_ = false;
  for (int i = 1; i <= output_; ++i) {
    const NodeSpec& s = nodes_[i];
    const int64_t w = s.width;
    switch (s.kind) {
      case NodeKind::Linear: {
        const LinearSpec& l = layers_[s.layer];
        kern::Epilogue<T> ep;
        ep.bias = b_off_[s.layer] >= 0 ? params_.data() + b_off_[s.layer] : nullptr;
        if (fused_into_[i] >= 0) {
          const NodeSpec& a = nodes_[fused_into_[i]];
          ep.act = a.act;
          ep.slope = T(a.slope);
          ep.act_out = outs_[fused_into_[i]].data();
          ep.ld_act = w;
        }
        kern::gemm<T>(false, true, N, l.out, l.in, out(s.inputs[0]), l.in,
                      params_.data() + w_off_[s.layer], l.in, outs_[i].data(), w, false, &ep);
        break;
      }
      case NodeKind::Activation:
        if (!fused_[i]) kern::act_forward<T>(outs_[i].data(), out(s.inputs[0]), N * w, s.act, T(s.slope));
        break;
      case NodeKind::Add:
        kern::add_into<T>(outs_[i].data(), out(s.inputs[0]), N * w, false);
        for (size_t k = 1; k < s.inputs.size(); ++k)
          kern::add_into<T>(outs_[i].data(), out(s.inputs[k]), N * w, true);
        break;
      case NodeKind::Dropout:
        if (training && s.slope > 0) {
          dropout_forward<T>(outs_[i].data(), masks_[i].data(), out(s.inputs[0]), N * w, s.slope,
                             mix64(seed_ ^ mix64(draws_++ * 0x100000001B3ull + static_cast<uint64_t>(i))));
          masked_ = true;
        } else {
          std::memcpy(outs_[i].data(), out(s.inputs[0]), sizeof(T) * N * w);
        }
        break;
      case NodeKind::Concat: {
        int64_t c0 = 0;
        for (int j : s.inputs) {
          const int64_t wj = nodes_[j].width;
          const T* src = out(j);
          T* dst = outs_[i].data();
          for (int64_t r = 0; r < N; ++r) std::memcpy(dst + r * w + c0, src + r * wj, sizeof(T) * wj);
          c0 += wj;
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
    case LossKind::CrossEntropy: return kern::cross_entropy<T>(g, row_loss_.data(), z, y.cls, N, D);
    case LossKind::MSE: return kern::mse<T>(g, row_loss_.data(), z, y.target, N, D);
    case LossKind::BCEWithLogits:
    default: return kern::bce_with_logits<T>(g, row_loss_.data(), z, y.target, N, D);
  }
}

template <class T>
void Model<T>::backward(int64_t N) {
  std::fill(written_.begin(), written_.end(), 0);
  std::fill(pwritten_.begin(), pwritten_.end(), 0);
  written_[output_] = 1;
  for (int i = output_; i >= 1; --i) {
    if (!written_[i] || !needs_grad_[i]) continue;
    const NodeSpec& s = nodes_[i];
    const T* dy = gouts_[i].data();
    const int64_t w = s.width;
    switch (s.kind) {
      case NodeKind::Linear: {
        const int L = s.layer;
        const LinearSpec& l = layers_[L];
        const int j = s.inputs[0];
        const bool acc = pwritten_[L];
        // dw (OUT,IN) = dz^T (OUT,N) . x (N,IN); db = column sums of dz
        kern::gemm<T>(true, false, l.out, l.in, N, dy, l.out, out(j), l.in,
                      grads_.data() + w_off_[L], l.in, acc);
        if (b_off_[L] >= 0) kern::colsum<T>(grads_.data() + b_off_[L], dy, N, l.out, acc);
        pwritten_[L] = 1;
        if (needs_grad_[j]) {  // dx (N,IN) = dz (N,OUT) . w (OUT,IN)
          kern::gemm<T>(false, false, N, l.in, l.out, dy, l.out, params_.data() + w_off_[L], l.in,
                        gouts_[j].data(), l.in, written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Activation: {
        const int j = s.inputs[0];
        if (needs_grad_[j]) {
          kern::act_backward<T>(gouts_[j].data(), dy, out(j), out(i), N * w, s.act, T(s.slope), written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Dropout: {
        const int j = s.inputs[0];
        if (needs_grad_[j]) {
          if (masked_) kern::mul_into<T>(gouts_[j].data(), dy, masks_[i].data(), N * w, written_[j]);
          else kern::add_into<T>(gouts_[j].data(), dy, N * w, written_[j]);
          written_[j] = 1;
        }
        break;
      }
      case NodeKind::Add:
        for (int j : s.inputs)
          if (needs_grad_[j]) {
            kern::add_into<T>(gouts_[j].data(), dy, N * w, written_[j]);
            written_[j] = 1;
          }
        break;
      case NodeKind::Concat: {
        int64_t c0 = 0;
        for (int j : s.inputs) {
          const int64_t wj = nodes_[j].width;
          if (needs_grad_[j]) {
            T* dst = gouts_[j].data();
            const bool acc = written_[j];
            for (int64_t r = 0; r < N; ++r)
              for (int64_t c = 0; c < wj; ++c)
                dst[r * wj + c] = acc ? dst[r * wj + c] + dy[r * w + c0 + c] : dy[r * w + c0 + c];
            written_[j] = 1;
          }
          c0 += wj;
        }
        break;
      }
      default: break;
    }
  }
  // A layer the loss does not reach has a zero gradient.
  for (size_t L = 0; L < layers_.size(); ++L)
    if (!pwritten_[L]) {
      const LinearSpec& l = layers_[L];
      std::fill_n(grads_.data() + w_off_[L], l.out * l.in, T(0));
      if (b_off_[L] >= 0) std::fill_n(grads_.data() + b_off_[L], l.out, T(0));
    }
}

template <class T>
double Model<T>::compute_gradients(const T* X, int64_t N, Labels<T> y) {
  forward(X, N, training_);
  const double loss = loss_and_seed(N, y, true);
  backward(N);
  grads_ready_ = true;
  return loss;
}

template <class T>
double Model<T>::loss_only(const T* X, int64_t N, Labels<T> y) {
  forward(X, N, training_);
  return loss_and_seed(N, y, false);
}

template <class T>
void Model<T>::apply_gradients() {
  const int slots = opt_.state_slots();
  for (size_t t = 0; t < tensors_.size(); ++t) {
    const ParamTensor& pt = tensors_[t];
    const int64_t o = pt.offset;
    steps_[t] += 1;
    kern::optimizer_step<T>(opt_, params_.data() + o, grads_.data() + o,
                            slots >= 1 ? state1_.data() + o : nullptr,
                            slots >= 2 ? state2_.data() + o : nullptr, pt.size(), steps_[t]);
  }
  grads_ready_ = false;
}

template <class T>
double Model<T>::train_step(const T* X, int64_t N, Labels<T> y) {
  const double loss = compute_gradients(X, N, y);
  apply_gradients();
  return loss;
}

template <class T>
void Model<T>::train_epoch(const T* X, Labels<T> y, const int64_t* order, int64_t n,
                           int64_t batch, double* losses) {
  const int64_t in = in_width(), D = out_width();
  if (static_cast<int64_t>(xbatch_.size()) < batch * in) xbatch_.assign(batch * in, T(0));
  if (y.cls && static_cast<int64_t>(lbatch_.size()) < batch) lbatch_.assign(batch, 0);
  if (y.target && static_cast<int64_t>(tbatch_.size()) < batch * D) tbatch_.assign(batch * D, T(0));
  int64_t b = 0;
  for (int64_t s = 0; s < n; s += batch, ++b) {
    const int64_t nb = std::min(batch, n - s);
    Labels<T> yb;
    for (int64_t r = 0; r < nb; ++r) {
      const int64_t src = order[s + r];
      std::memcpy(xbatch_.data() + r * in, X + src * in, sizeof(T) * in);
      if (y.cls) lbatch_[r] = y.cls[src];
      if (y.target) std::memcpy(tbatch_.data() + r * D, y.target + src * D, sizeof(T) * D);
    }
    if (y.cls) yb.cls = lbatch_.data();
    if (y.target) yb.target = tbatch_.data();
    losses[b] = train_step(xbatch_.data(), nb, yb);
  }
}

template <class T>
void Model<T>::predict(const T* X, int64_t N, T* dst, int64_t batch) {
  const int64_t D = out_width(), in = in_width();
  for (int64_t s = 0; s < N; s += batch) {
    const int64_t nb = std::min(batch, N - s);
    forward(X + s * in, nb, false);
    std::memcpy(dst + s * D, out(output_), sizeof(T) * nb * D);
  }
}

template <class T>
std::pair<double, int64_t> Model<T>::evaluate(const T* X, int64_t N, Labels<T> y, int64_t batch) {
  const int64_t D = out_width(), in = in_width();
  double total = 0;
  int64_t correct = 0;
  for (int64_t s = 0; s < N; s += batch) {
    const int64_t nb = std::min(batch, N - s);
    Labels<T> yb;
    if (y.cls) yb.cls = y.cls + s;
    if (y.target) yb.target = y.target + s * D;
    forward(X + s * in, nb, false);
    total += loss_and_seed(nb, yb, false) * static_cast<double>(nb);
    if (y.cls) correct += kern::count_correct<T>(out(output_), yb.cls, nb, D);
  }
  return {total / static_cast<double>(N), correct};
}

template class Model<float>;
template class Model<double>;

}  // namespace lp
