// The model runtime: a directed acyclic graph of nodes in topological order, the parameter
// store, the workspace (activations, gradients, scratch; sized once per batch capacity), the
// loss and the optimizer. A Sequential is the chain special case of the same graph.
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "layerprop/common.hpp"
#include "layerprop/optim.hpp"

namespace lp {

enum class NodeKind : int { Input = 0, Linear, Activation, Add, Concat, Dropout };

struct LinearSpec {
  int64_t in = 0, out = 0;
  bool bias = true;
};

struct NodeSpec {
  NodeKind kind = NodeKind::Input;
  std::vector<int> inputs;  // indices of earlier nodes
  int64_t width = 0;        // features of this node's output
  int layer = -1;           // Linear: index into the LinearSpec table (shared by reuse)
  Act act = Act::Identity;  // Activation
  double slope = 0.01;      // LeakyReLU: negative slope; Dropout: drop probability p
};

// One parameter tensor inside the contiguous parameter store.
struct ParamTensor {
  int layer;
  bool is_bias;
  int64_t offset, rows, cols;  // bias: rows = out, cols = 1
  int64_t size() const { return rows * cols; }
};

// Labels of one batch: class indices for cross-entropy, float targets otherwise.
template <class T>
struct Labels {
  const int64_t* cls = nullptr;
  const T* target = nullptr;
};

template <class T>
class Model {
 public:
  Model(std::vector<LinearSpec> layers, std::vector<NodeSpec> nodes, int output);

  // Shape facts.
  int64_t in_width() const { return nodes_[0].width; }
  int64_t out_width() const { return nodes_[output_].width; }
  int64_t num_params() const { return static_cast<int64_t>(params_.size()); }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  int64_t capacity() const { return cap_; }
  std::mutex& mutex() { return mu_; }

  void compile(LossKind loss, const kern::OptConfig& opt);
  bool compiled() const { return compiled_; }
  LossKind loss_kind() const { return loss_; }
  const kern::OptConfig& optimizer() const { return opt_; }

  // Steps; every pointer is already validated by the caller (bindings).
  double train_step(const T* X, int64_t N, Labels<T> y);
  double compute_gradients(const T* X, int64_t N, Labels<T> y);
  void apply_gradients();
  bool gradients_ready() const { return grads_ready_; }
  // A whole epoch: batches of rows X[order[b:b+bs]] (order: permutation or arange), one
  // train_step each; losses (n_batches) receives each batch's loss.
  void train_epoch(const T* X, Labels<T> y, const int64_t* order, int64_t n, int64_t batch,
                   double* losses);
  // Forward only; out (N, out_width).
  void predict(const T* X, int64_t N, T* out, int64_t batch);
  // Mean loss and (cross-entropy) number of correct argmax predictions, in batches.
  std::pair<double, int64_t> evaluate(const T* X, int64_t N, Labels<T> y, int64_t batch);
  // Loss and gradients only (no update).
  double loss_only(const T* X, int64_t N, Labels<T> y);

  // Training mode: dropout masks are drawn (inference: dropout is the identity). Masks come
  // from a counter-based hash of (seed, draw, element), so they never depend on threads.
  void set_training(bool on) { training_ = on; }
  bool training() const { return training_; }
  void set_seed(uint64_t s) { seed_ = s; draws_ = 0; }

  // Optimizer state (for saving / inspection).
  Buffer<T>& state(int slot) { return slot == 0 ? state1_ : state2_; }
  std::vector<int64_t>& steps() { return steps_; }

 private:
  void ensure_capacity(int64_t N);
  void forward(const T* X, int64_t N, bool training);
  double loss_and_seed(int64_t N, Labels<T> y, bool want_grad);
  void backward(int64_t N);
  T* out(int i) { return i == 0 ? const_cast<T*>(x_) : outs_[i].data(); }

  std::vector<LinearSpec> layers_;
  std::vector<NodeSpec> nodes_;
  int output_;
  std::vector<ParamTensor> tensors_;
  std::vector<int64_t> w_off_, b_off_;        // per layer, offsets into params_ (b: -1 if none)
  std::vector<std::vector<int>> consumers_;
  std::vector<char> needs_grad_;              // d loss / d node-output required
  std::vector<int> fused_into_;               // Linear node -> Activation node it feeds (or -1)
  std::vector<char> fused_;                   // Activation node computed by its Linear's epilogue

  Buffer<T> params_, grads_, state1_, state2_;
  std::vector<int64_t> steps_;                // per tensor
  std::vector<Buffer<T>> outs_, gouts_;       // per node, cap x width
  std::vector<Buffer<T>> masks_;              // Dropout nodes: 0 or 1/(1-p) per element
  Buffer<T> row_loss_, xbatch_, tbatch_;
  std::vector<int64_t> lbatch_;
  std::vector<char> written_, pwritten_;
  const T* x_ = nullptr;
  int64_t cap_ = 0;

  bool compiled_ = false, grads_ready_ = false;
  bool training_ = true, masked_ = false;
  uint64_t seed_ = 0, draws_ = 0;
  LossKind loss_ = LossKind::CrossEntropy;
  kern::OptConfig opt_;
  std::mutex mu_;
};

}  // namespace lp
