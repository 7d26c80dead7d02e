// The model runtime: a directed acyclic graph of nodes in topological order, the parameter
// store, the workspace (activations, gradients, scratch; sized once per batch capacity), the
// loss, the optimizer and the update schedule. A Sequential is the chain special case of the
// same graph.
#pragma once
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "layerprop/common.hpp"
#include "layerprop/gemm.hpp"
#include "layerprop/graph.hpp"
#include "layerprop/optim.hpp"
#include "layerprop/runtime.hpp"
#include "layerprop/schedule.hpp"
#include "layerprop/sparse.hpp"
#include "train/optimizer.hpp"

namespace lp {

// A class label v at `row` must lie in [0, C): ValueError naming y otherwise.
inline void check_class_label(int64_t v, int64_t row, int64_t C) {
  if (v < 0 || v >= C)
    throw ValueError("y: class label " + std::to_string(v) + " at row " + std::to_string(row) +
                     " is out of range [0, " + std::to_string(C) + ")");
}

// Labels of one batch: class indices for cross-entropy, float targets otherwise.
template <class T>
struct Labels {
  const int64_t* cls = nullptr;
  const T* target = nullptr;
  const T* weight = nullptr;  // per-row sample weights (>= 0, finite), or null
};

// A sample weight v at `row` must be finite and >= 0: ValueError naming sample_weight otherwise.
template <class T>
inline void check_sample_weight(T v, int64_t row) {
  if (!(v >= T(0)) || !(v <= std::numeric_limits<T>::max()))
    throw ValueError("sample_weight: expected finite weights >= 0, got " + std::to_string(static_cast<double>(v)) +
                     " at row " + std::to_string(row));
}

// Input rows in CSR form (scipy.sparse.csr_matrix's three arrays), owned by the caller and
// not trusted: a batch is copied into the model's own buffers and every index checked there,
// where the kernels read it. `nnz` is the length of indices and values.
template <class T>
struct CsrRows {
  const int64_t* indptr = nullptr;  // rows + 1
  const int64_t* indices = nullptr; // nnz
  const T* values = nullptr;        // nnz
  int64_t rows = 0, nnz = 0;
};

// The input of a call: dense rows (N, in_width) or CSR rows.
template <class T>
struct Input {
  const T* dense = nullptr;
  CsrRows<T> csr;
  Input(const T* x) : dense(x) {}  // NOLINT: a dense pointer is an input
  Input(const CsrRows<T>& c) : csr(c) {}  // NOLINT
  bool sparse() const { return dense == nullptr; }
};

enum class ScheduleKind : int { Simultaneous = 0, LayerwiseTopDown, LayerwiseBottomUp, LocoPropS, LocoPropM, Count };
// LocoProp's inner steps per training step are bounded: a step runs without the GIL and cannot
// be interrupted, so a configuration (or a loaded file) must not ask for an endless one.
constexpr int64_t kMaxInnerSteps = 1000000;
struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::Simultaneous;
  int64_t inner_steps = 10;
  double inner_lr = 0;     // LocoProp base learning rate of the local problems (0: optimizer's lr)
  double target_lr = 10;   // LocoProp activation step gamma
};

// Work done by the last step: node forward and backward executions.
struct OpCounts {
  int64_t forward = 0, backward = 0;
};

// How a forward pass runs.
struct FwdMode {
  bool training = false;     // batch statistics / dropout
  bool update_stats = false; // BatchNorm running statistics
  bool reuse_masks = false;  // dropout: same masks as the previous forward of this step
};

// Data-parallel training (docs/distributed.md): sums buffers over the ranks of a job. Every
// rank calls the same methods in the same order; each returns the same values on every rank.
template <class T>
struct Reducer {
  virtual ~Reducer() = default;
  virtual void sum(T* data, int64_t n) = 0;             // in place
  virtual void sum_scalars(double* v, int n) = 0;       // in place
  virtual void broadcast(T* data, int64_t n) = 0;       // rank 0's values, in place
};

// Whether predict and evaluate may keep weights packed between calls (default on;
// LAYERPROP_PACKED_WEIGHTS=0 turns it off): for tests and measurements.
void set_packed_weights(bool on);

template <class T>
class Model {
 public:
  Model(std::vector<LayerSpec> layers, std::vector<NodeSpec> nodes, int output);

  // Shape facts.
  int64_t in_width() const { return g_.nodes[0].width; }
  int64_t out_width() const { return g_.nodes[g_.output].width; }
  int64_t num_params() const { return static_cast<int64_t>(ps_.params.size()); }
  const std::vector<ParamTensor>& tensors() const { return ps_.tensors; }
  const std::vector<ParamTensor>& buffer_tensors() const { return ps_.buffer_tensors; }
  const std::vector<LayerSpec>& layers() const { return g_.layers; }
  // Every way to write the parameters goes through here or bumps the version itself (an
  // optimizer step, a faulty step put back); predict's packed weights are valid for one version.
  T* params() {
    params_changed();
    return ps_.params.data();
  }
  const T* params_read() const { return ps_.params.data(); }
  // The parameter version: bumped (atomically, by any thread) before any write to the
  // parameters. The Python layer bumps it whenever it hands out a view of them.
  uint64_t param_version() const { return param_version_.load(); }
  void params_changed() { param_version_.fetch_add(1); }
  // predict's packed weights (docs/threads.md): built by a call whose cache_token is the
  // current version (the caller's promise that nothing outside holds a view of the
  // parameters), used while the version stays the same.
  struct PackedStats {
    int64_t builds = 0, uses = 0, bytes = 0;
    bool valid = false;
  };
  PackedStats packed_stats() const;
  T* grads() { return ps_.grads.data(); }
  T* buffers() { return ps_.buffers.data(); }
  int64_t buffer_size() const { return static_cast<int64_t>(ps_.buffers.size()); }
  int64_t capacity() const { return ws_.cap; }
  std::mutex& mutex() { return mu_; }

  void compile(LossKind loss, const kern::OptConfig& opt, const ScheduleConfig& sched,
               const kern::ClipConfig& clip = {});
  bool compiled() const { return compiled_; }
  LossKind loss_kind() const { return loss_; }
  const kern::OptConfig& optimizer() const { return optim_.config(); }
  const ScheduleConfig& schedule() const { return sched_; }
  // Stored layers the compiled schedule treats differently from its rule (Schedule::fallbacks).
  std::vector<int> schedule_fallbacks() const { return schedule_ ? schedule_->fallbacks(*this) : std::vector<int>{}; }
  const kern::ClipConfig& clipping() const { return clip_; }
  // Units of the update schedules: layers with parameters that the graph uses, in topological
  // order (of their first use).
  std::vector<int> units() const;

  // Steps. Shapes and dtypes are validated by the caller (bindings) with the GIL held; what
  // another Python thread could still change after the GIL is released (class labels, the row
  // order, the compiled loss) is checked again here, where it is read, under the model mutex:
  // labels are copied into the model's own buffer and range-checked on the copy.
  //
  // Every training step is guarded: a non-finite loss or gradient leaves the parameters,
  // optimizer state, BatchNorm running statistics and dropout generator as they were before the
  // step (train_step throws NonFiniteError; train_epoch reports it, see EpochResult).
  double train_step(const Input<T>& X, int64_t N, Labels<T> y);
  // update_stats=false: BatchNorm running statistics stay as they are (loss_and_grads). A
  // non-finite loss or gradient puts the running statistics and dropout generator back and
  // leaves gradients that apply_gradients refuses (gradients_fault()).
  double compute_gradients(const Input<T>& X, int64_t N, Labels<T> y, bool update_stats = true);
  // Clips the gradients (if compiled with clipping), then one optimizer step per tensor.
  // l2_weights adds l2 * W to the gradient of every Linear weight (not biases or norm
  // parameters: scikit-learn's alpha penalty), inside the optimizer's pass (as its L2 weight
  // decay), after clipping; grad_scale first multiplies every gradient.
  void apply_gradients(double l2_weights = 0, double grad_scale = 1);
  bool gradients_ready() const { return grads_ready_; }
  int gradients_fault() const { return grads_fault_; }
  // A whole epoch: batches of rows X[order[b:b+bs]] of X (rows, in_width), one guarded step
  // each; losses (n_batches) receives each batch's loss (NaN-free only for applied batches).
  enum class OnNonFinite : int { Stop = 0, Skip = 1 };
  struct EpochResult {
    int64_t done = 0;         // batches processed (applied or skipped)
    int64_t skipped = 0;      // batches whose step was not applied (OnNonFinite::Skip)
    int64_t fault_batch = -1; // OnNonFinite::Stop: the batch that stopped the epoch
    int fault = 0;            // kind of that fault: 1 non-finite loss, 2 non-finite gradient
  };
  EpochResult train_epoch(const Input<T>& X, int64_t rows, Labels<T> y, const int64_t* order, int64_t n,
                          int64_t batch, double* losses, OnNonFinite policy);
  // Forward only (inference mode); out (N, out_width).
  void predict(const Input<T>& X, int64_t N, T* out, int64_t batch, uint64_t cache_token = 0);
  // Mean (weighted) loss, (cross-entropy) the number or weight of correct argmax predictions,
  // and the total weight (N without weights), in batches.
  struct Evaluation {
    double loss = 0, correct = 0, total = 0;
  };
  Evaluation evaluate(const Input<T>& X, int64_t N, Labels<T> y, int64_t batch, uint64_t cache_token = 0);
  // Loss of the batch in the current mode, no gradients, no update.
  double loss_only(const Input<T>& X, int64_t N, Labels<T> y);
  // Update only the tensors of layer L with the current gradients (one optimizer step each),
  // at learning rate lr (negative: the optimizer's).
  void apply_layer(int L, double lr = -1.0, double l2_weights = 0);
  const OpCounts& last_ops() const { return ops_; }

  // Training mode: dropout masks are drawn and batch norm uses (and updates) batch statistics
  // (inference: dropout is the identity, batch norm uses running statistics). Masks come from
  // a counter-based hash of (seed, draw, element), so they never depend on threads.
  void set_training(bool on) { training_ = on; }
  bool training() const { return training_; }
  void set_seed(uint64_t s) { seed_ = s; draws_ = 0; }
  uint64_t rng_seed() const { return seed_; }
  uint64_t rng_draws() const { return draws_; }
  void set_rng_state(uint64_t s, uint64_t d) { seed_ = s; draws_ = d; }

  // The optimizer part: named state slots and step counts (for saving / inspection).
  Optimizer<T>& optim() { return optim_; }
  std::vector<int64_t>& steps() { return optim_.steps(); }

  // ---- The parts a schedule drives (cpp/include/layerprop/schedule.hpp). A schedule's step
  // runs under the model mutex on a staged batch: x is what stage_input returned.
  // The graph:
  const std::vector<NodeSpec>& nodes() const { return g_.nodes; }
  int output() const { return g_.output; }
  const std::vector<int>& consumers(int node) const { return g_.consumers[node]; }
  const std::vector<int>& layer_nodes(int L) const { return g_.layer_nodes[L]; }
  // The forward pass from node `from` (earlier nodes' outputs are kept), the loss of the
  // output with its gradient seeded (want_grad), and the backward pass over nodes >= down_to
  // with parameter gradients for `only_layer` only (-1: all).
  void forward(const T* X, int64_t N, FwdMode mode, int from = 1);
  double loss_and_seed(int64_t N, Labels<T> y, bool want_grad);
  void backward(int64_t N, int down_to = 1, int only_layer = -1);
  // Forward, loss and backward, checked: a non-finite loss or gradient sets gradients_fault()
  // and puts back what the forward changed (BatchNorm statistics, the dropout stream).
  double gradients(const T* X, int64_t N, Labels<T> y, bool update_stats);
  // The workspace: node outputs and their gradients (capacity() rows each).
  T* node_out(int i) { return out(i); }
  T* node_grad(int i) { return ws_.gouts[i].data(); }
  // The parameter store: layer L's bias and its gradient (null without a bias).
  const T* bias(int L) const { return ps_.b_off[L] >= 0 ? ps_.params.data() + ps_.b_off[L] : nullptr; }
  T* bias_grad(int L) { return ps_.b_off[L] >= 0 ? ps_.grads.data() + ps_.b_off[L] : nullptr; }
  // A Linear layer L on input rows x (a node output, or the sparse marker): forward into y
  // (N, out) with the epilogue, and the weight gradient from dz (N, out).
  void linear_forward(int L, const T* x, int64_t N, T* y, const kern::Epilogue<T>* ep);
  void linear_weight_grad(int L, const T* x, int64_t N, const T* dz, bool accumulate);
  // Data-parallel: with a reducer set, every gradient a step computes from this rank's rows
  // is combined with the other ranks' before it is used, so N ranks given the parts of a
  // batch match one process given all of it. dp_begin (once per step, after the first loss):
  // this rank's weight (rows, or the sum of its sample weights) and loss -> the batch's loss;
  // dp_share() is then this rank's weight over the total. dp_average: gradients of layer L
  // (-1: all) computed as this rank's weighted mean -> the batch's mean. dp_sum: gradients
  // summed over this rank's rows -> summed over all rows. Without a reducer all are no-ops.
  void set_reducer(std::shared_ptr<Reducer<T>> r) { reducer_ = std::move(r); }
  bool distributed() const { return reducer_ != nullptr; }
  double dp_begin(int64_t N, Labels<T> y, double local_loss);
  double dp_share() const { return dp_share_; }
  void dp_average(int L = -1);
  void dp_sum(int L);
  // Rank 0's BatchNorm running statistics to every rank (after each applied step).
  void dp_sync_buffers();
  void reset_ops() { ops_ = {}; }
  void add_ops(int64_t forward, int64_t backward) { ops_.forward += forward; ops_.backward += backward; }

 private:
  // The rows of one call or batch, ready for forward(): rows src[r] (or row0 + r when src is
  // null), r < N, of X. Dense rows are used in place (or gathered into xbatch_ when src is
  // set); CSR rows are copied into the model's sparse batch and checked there (indices in
  // range, values finite). The result is the sparse marker when every consumer of the input
  // is a Linear layer (the sparse kernels read the staged batch), else the batch densified
  // into xbatch_.
  const T* stage_input(const Input<T>& X, int64_t N, const int64_t* src, int64_t row0);
  const T* sparse_marker() const { return &sp_marker_; }
  // For one inference call on sparse input (predict, evaluate): the weights of the Linear
  // layers that read the input, transposed once, so every batch adds contiguous rows; off
  // again when the call ends (also by an exception).
  struct SparseInference {
    SparseInference(Model<T>& m, const Input<T>& X);
    ~SparseInference() { m_.sp_wt_ready_ = false; }
    SparseInference(const SparseInference&) = delete;
    SparseInference& operator=(const SparseInference&) = delete;
    Model<T>& m_;
  };
  // For one dense inference call (predict, evaluate) in batches of `rows`: the Linear weights
  // that gemm would pack on every batch, packed once and kept while the parameter version
  // stays the same (built only when token is the current version); off when the call ends.
  struct DenseInference {
    DenseInference(Model<T>& m, const Input<T>& X, int64_t rows, uint64_t token);
    ~DenseInference() { m_.packed_on_ = false; }
    DenseInference(const DenseInference&) = delete;
    DenseInference& operator=(const DenseInference&) = delete;
    Model<T>& m_;
  };
  // Labels the compiled loss reads, copied into lbatch_ (class labels, range-checked) for rows
  // src[r] (or row0 + r when src is null), r < N; src must be the model's own, already checked
  // indices (rows_), never a caller's array. Targets are passed through (rows of out_width
  // values; any value is safe to read).
  Labels<T> stage_labels(Labels<T> y, int64_t N, const int64_t* src = nullptr, int64_t row0 = 0,
                         bool positive_sum = true);
  // Sample weights of the same rows, copied into wbatch_ and checked there (finite, >= 0, and
  // for a training batch a positive sum); null when w is null.
  const T* stage_weights(const T* w, int64_t N, const int64_t* src, int64_t row0, bool positive_sum = true);
  void require_labels(Labels<T> y) const;
  // One training step of the compiled schedule on staged labels; fault: 0, or 1 (non-finite
  // loss) / 2 (non-finite gradient), in which case nothing the step changed is kept.
  double guarded_step(const T* X, int64_t N, Labels<T> y, int& fault);
  double guarded_step_body(const T* X, int64_t N, Labels<T> y, int& fault);
  T* out(int i) { return i == 0 ? const_cast<T*>(x_) : ws_.outs[i].data(); }
  void layer_forward(int i, int64_t N, const FwdMode& mode);
  void norm_backward(int i, int64_t N, bool param_grads, bool want_dx);

  Graph g_;                                   // specs, topology, fusion plan (graph.hpp)
  ParamStore<T> ps_;                          // parameters, gradients, buffers, tensor table
  Optimizer<T> optim_;                        // config, named state slots, per-tensor steps
  Workspace<T> ws_;                           // node outputs, gradients, scratch for capacity rows
  Buffer<T> xbatch_, tbatch_, wbatch_;        // staged inputs, targets, sample weights
  // The staged sparse batch: CSR of the batch's rows.
  std::vector<int64_t> sp_ptr_, sp_idx_, sp_start_;  // sp_start_: each row's checked start in X
  Buffer<T> sp_val_;
  std::vector<Buffer<T>> sp_wt_;              // per layer reading the input: W^T (SparseInference)
  bool sp_wt_ready_ = false;
  T sp_marker_ = T(0);
  // What a faulty step puts back: BatchNorm running statistics (every schedule) and, for the
  // schedules that update inside the step, the parameters and optimizer state.
  Buffer<T> stats_backup_, params_backup_;
  StepGovernor governor_;  // 1 thread for the steps when that is faster (runtime.hpp)
  std::vector<int64_t> lbatch_, rows_;          // staged class labels; checked row indices
  std::vector<char> written_, pwritten_;
  std::vector<uint64_t> mask_keys_;           // per node: key of the current dropout masks
  const T* x_ = nullptr;
  OpCounts ops_;

  bool compiled_ = false, grads_ready_ = false;
  int grads_fault_ = 0;
  bool training_ = true;
  uint64_t seed_ = 0, draws_ = 0;
  std::shared_ptr<Reducer<T>> reducer_;       // data-parallel: null in one process
  double dp_share_ = 1.0;
  LossKind loss_ = LossKind::CrossEntropy;
  ScheduleConfig sched_;
  std::unique_ptr<Schedule<T>> schedule_;     // the compiled schedule (train/<name>.cpp)
  kern::ClipConfig clip_;
  std::mutex mu_;
  std::atomic<uint64_t> param_version_{1};
  std::vector<kern::PackedNT<T>> packed_;     // per layer (N == 0: not packed)
  uint64_t packed_version_ = 0;               // the version packed_ holds (0: none)
  bool packed_on_ = false;                    // inside a DenseInference that may use packed_
  int64_t packed_builds_ = 0, packed_uses_ = 0;
};

}  // namespace lp
