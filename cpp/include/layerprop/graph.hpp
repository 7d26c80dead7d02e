// The graph, parameter store and workspace parts of a model.
//
// Graph: the node and layer specs, checked once (widths, kinds, topological order, settings),
// and what follows from them: each node's consumers, which node outputs need a gradient, the
// nodes that use each stored layer, and the fusion plan (a Linear whose only consumer is an
// activation computes it in its GEMM's store). Immutable once built.
//
// ParamStore: every parameter, its gradient and every buffer (BatchNorm running statistics) in
// three contiguous arrays, with one named tensor table ("weight", "bias", "running_mean", ...)
// and each stored layer's offsets.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layerprop/common.hpp"

namespace lp {

// Count: the number of kinds (range checks), never a kind itself.
enum class NodeKind : int { Input = 0, Linear, Activation, Add, Concat, Dropout, BatchNorm, LayerNorm, Count };
enum class LayerKind : int { Linear = 0, BatchNorm, LayerNorm, Count };

// A layer that owns parameters (a "unit" of the update schedules). Norm layers: in == out.
struct LayerSpec {
  LayerKind kind = LayerKind::Linear;
  int64_t in = 0, out = 0;
  bool bias = true;         // Linear: has a bias; BatchNorm: affine (weight and bias)
  double eps = 1e-5;        // norm layers
  double momentum = 0.1;    // BatchNorm running statistics
};

struct NodeSpec {
  NodeKind kind = NodeKind::Input;
  std::vector<int> inputs;  // indices of earlier nodes
  int64_t width = 0;        // features of this node's output
  int layer = -1;           // Linear / norm nodes: index into the LayerSpec table (shared by reuse)
  Act act = Act::Identity;  // Activation
  ActSettings act_settings; // Activation: negative_slope (LeakyReLU), alpha (ELU), beta, threshold (Softplus)
  double p = 0;             // Dropout: drop probability
};

// One parameter (or buffer) tensor inside a contiguous store.
struct ParamTensor {
  int layer;
  std::string name;            // "weight", "bias", "running_mean", "running_var"
  int64_t offset, rows, cols;  // cols == 0: a vector of `rows` elements
  int64_t size() const { return rows * (cols ? cols : 1); }
};

struct Graph {
  // ValueError naming the node or layer for a graph the core cannot run.
  Graph(std::vector<LayerSpec> layers, std::vector<NodeSpec> nodes, int output);

  std::vector<LayerSpec> layers;
  std::vector<NodeSpec> nodes;  // topological order; node 0 is the input
  int output;
  std::vector<std::vector<int>> consumers;    // per node, the nodes that read it
  std::vector<std::vector<int>> layer_nodes;  // per layer, the nodes that use it
  std::vector<char> needs_grad;               // d loss / d node-output required
  std::vector<int> fused_into;                // Linear node -> Activation node it feeds (or -1)
  std::vector<char> fused;                    // Activation node computed by its Linear's store
  bool input_linear_only = false;             // every consumer of the input is a Linear
};

template <class T>
struct ParamStore {
  // Lays out the graph's stored layers (MemoryError before allocating what this machine cannot
  // hold) and initializes the buffers (running variances 1, means 0).
  explicit ParamStore(const Graph& g);

  Buffer<T> params, grads, buffers;
  std::vector<ParamTensor> tensors, buffer_tensors;
  std::vector<int64_t> w_off, b_off;          // per layer, offsets into params (-1 if none)
  std::vector<int64_t> rm_off, rv_off;        // BatchNorm: offsets into buffers (-1 if none)
  std::vector<std::vector<int>> layer_tensors;  // per layer, indices into tensors
};

// Workspace: per node, its output and (where a gradient is needed) its gradient for `cap` rows,
// and its scratch (dropout masks, norm statistics); per row, the loss. Sized for the largest
// batch seen and reused: a step allocates nothing once the workspace is large enough.
template <class T>
struct Workspace {
  // Room for N rows (MemoryError naming the batch, before anything is allocated, if this
  // machine cannot hold it); nothing happens when N <= cap.
  void ensure(const Graph& g, int64_t N);

  std::vector<Buffer<T>> outs, gouts;  // per node, cap x width (node 0: the input, not stored)
  std::vector<Buffer<T>> aux;          // per node scratch: dropout masks; norm statistics
  Buffer<T> row_loss;                  // cap
  int64_t cap = 0;
};

}  // namespace lp
