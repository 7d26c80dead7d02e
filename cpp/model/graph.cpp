// The graph and parameter store parts (layerprop/graph.hpp).
#include "layerprop/graph.hpp"

#include <algorithm>
#include <cmath>

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

Graph::Graph(std::vector<LayerSpec> layers_in, std::vector<NodeSpec> nodes_in, int output_in)
    : layers(std::move(layers_in)), nodes(std::move(nodes_in)), output(output_in) {
  const int n = static_cast<int>(nodes.size());
  if (n < 2 || nodes[0].kind != NodeKind::Input)
    throw ValueError("graph: node 0 must be the input and at least one layer must follow");
  if (output < 1 || output >= n) throw ValueError("graph: output node out of range");
  for (auto& l : layers) {
    if (l.in < 1 || l.out < 1) throw ValueError("graph: layer sizes must be >= 1");
    if (l.kind != LayerKind::Linear && l.in != l.out) throw ValueError("graph: a norm layer keeps its width");
    if (l.kind != LayerKind::Linear && !(l.eps > 0)) throw ValueError("graph: eps must be > 0");
    if (l.kind == LayerKind::BatchNorm && !(l.momentum >= 0 && l.momentum <= 1))
      throw ValueError("graph: momentum must be in [0, 1]");
  }
  consumers.assign(n, {});
  needs_grad.assign(n, 0);
  fused_into.assign(n, -1);
  fused.assign(n, 0);
  layer_nodes.assign(layers.size(), {});
  if (nodes[0].width < 1) throw ValueError("graph: input width must be >= 1");
  for (int i = 1; i < n; ++i) {
    NodeSpec& s = nodes[i];
    if (s.kind == NodeKind::Input) throw ValueError("graph: only one input node is supported");
    if (s.inputs.empty()) throw ValueError("graph: " + node_str(i) + " has no inputs");
    for (int j : s.inputs) {
      if (j < 0 || j >= i) throw ValueError("graph: nodes must be in topological order");
      consumers[j].push_back(i);
      needs_grad[i] |= needs_grad[j];
    }
    auto w = [&](int k) { return nodes[s.inputs[k]].width; };
    switch (s.kind) {
      case NodeKind::Linear:
      case NodeKind::BatchNorm:
      case NodeKind::LayerNorm: {
        if (s.layer < 0 || s.layer >= static_cast<int>(layers.size()) || s.inputs.size() != 1)
          throw ValueError("graph: bad layer " + node_str(i));
        const LayerSpec& l = layers[s.layer];
        const LayerKind want = s.kind == NodeKind::Linear ? LayerKind::Linear
                               : s.kind == NodeKind::BatchNorm ? LayerKind::BatchNorm : LayerKind::LayerNorm;
        if (l.kind != want) throw ValueError("graph: " + node_str(i) + " refers to a layer of another kind");
        if (w(0) != l.in || s.width != l.out)
          throw ValueError("graph: " + node_str(i) + " expects " + std::to_string(l.in) +
                           " input features, gets " + std::to_string(w(0)));
        layer_nodes[s.layer].push_back(i);
        if (s.kind == NodeKind::Linear || l.bias || l.kind == LayerKind::LayerNorm) needs_grad[i] = 1;
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
  input_linear_only = true;
  for (int c : consumers[0]) input_linear_only = input_linear_only && nodes[c].kind == NodeKind::Linear;
  // Linear -> activation pairs where the activation is the Linear's only consumer: the
  // forward GEMM applies bias and activation in its store.
  for (int i = 1; i < n; ++i)
    if (nodes[i].kind == NodeKind::Linear && consumers[i].size() == 1 &&
        nodes[consumers[i][0]].kind == NodeKind::Activation) {
      fused_into[i] = consumers[i][0];
      fused[consumers[i][0]] = 1;
    }
}

template <class T>
ParamStore<T>::ParamStore(const Graph& g) {
  // Parameter store: per layer, weight then bias; buffers: BatchNorm running statistics.
  int64_t off = 0, boff = 0;
  layer_tensors.assign(g.layers.size(), {});
  for (size_t L = 0; L < g.layers.size(); ++L) {
    const LayerSpec& l = g.layers[L];
    const int li = static_cast<int>(L);
    const bool has_w = l.kind == LayerKind::Linear || l.kind == LayerKind::LayerNorm || l.bias;
    const bool has_b = l.kind == LayerKind::LayerNorm || l.bias;
    w_off.push_back(has_w ? off : -1);
    if (has_w) {
      layer_tensors[L].push_back(static_cast<int>(tensors.size()));
      if (l.kind == LayerKind::Linear) tensors.push_back({li, "weight", off, l.out, l.in});
      else tensors.push_back({li, "weight", off, l.out, 0});
      const std::string what = "layer " + std::to_string(L) + " (" + std::to_string(l.in) + " -> " +
                               std::to_string(l.out) + " features)";
      off = checked_add(off, l.kind == LayerKind::Linear ? checked_mul(l.out, l.in, what) : l.out, what);
    }
    b_off.push_back(has_b ? off : -1);
    if (has_b) {
      layer_tensors[L].push_back(static_cast<int>(tensors.size()));
      tensors.push_back({li, "bias", off, l.out, 0});
      off += l.out;
    }
    if (l.kind == LayerKind::BatchNorm) {
      rm_off.push_back(boff);
      buffer_tensors.push_back({li, "running_mean", boff, l.out, 0});
      boff += l.out;
      rv_off.push_back(boff);
      buffer_tensors.push_back({li, "running_var", boff, l.out, 0});
      boff += l.out;
    } else {
      rm_off.push_back(-1);
      rv_off.push_back(-1);
    }
  }
  // Parameters and gradients: refused before anything is allocated if this machine cannot hold
  // them (the message names the largest layer).
  {
    int64_t big = -1, big_size = 0;
    for (size_t L = 0; L < g.layers.size(); ++L)
      if (g.layers[L].kind == LayerKind::Linear && g.layers[L].out * g.layers[L].in > big_size) {
        big = static_cast<int64_t>(L);
        big_size = g.layers[L].out * g.layers[L].in;
      }
    std::string what = "model parameters and gradients (" + std::to_string(off) + " parameters";
    if (big >= 0)
      what += "; the largest, layer " + std::to_string(big) + ", is " + std::to_string(g.layers[big].in) + " -> " +
              std::to_string(g.layers[big].out) + " features";
    check_allocation(checked_mul(checked_mul(off, 2, what), static_cast<int64_t>(sizeof(T)), what), what + ")");
  }
  params.assign(static_cast<size_t>(off), T(0));
  grads.assign(static_cast<size_t>(off), T(0));
  buffers.assign(static_cast<size_t>(boff), T(0));
  for (size_t L = 0; L < g.layers.size(); ++L)
    if (rv_off[L] >= 0) std::fill_n(buffers.data() + rv_off[L], g.layers[L].out, T(1));
}

template struct ParamStore<float>;
template struct ParamStore<double>;

template <class T>
void Workspace<T>::ensure(const Graph& g, int64_t N) {
  const int n = static_cast<int>(g.nodes.size());
  if (static_cast<int>(outs.size()) != n) {
    outs.resize(n);
    gouts.resize(n);
    aux.resize(n);
  }
  if (N <= cap) return;
  // The workspace of a batch of N rows, checked before any of it is allocated.
  const std::string what = "X: a batch of " + std::to_string(N) + " rows";
  int64_t elems = N;  // row losses
  for (int i = 1; i < n; ++i) {
    const int64_t per = 1 + (g.needs_grad[i] ? 1 : 0) + (g.nodes[i].kind == NodeKind::Dropout ? 1 : 0);
    elems = checked_add(elems, checked_mul(checked_mul(N, g.nodes[i].width, what), per, what), what);
  }
  check_allocation(checked_mul(elems, static_cast<int64_t>(sizeof(T)), what), what + " (workspace)");
  for (int i = 1; i < n; ++i) {
    const size_t sz = static_cast<size_t>(N * g.nodes[i].width);
    outs[i].assign(sz, T(0));
    if (g.needs_grad[i]) gouts[i].assign(sz, T(0));
    if (g.nodes[i].kind == NodeKind::Dropout) aux[i].assign(sz, T(0));
    if (g.nodes[i].kind == NodeKind::BatchNorm) aux[i].assign(2 * g.nodes[i].width, T(0));
    if (g.nodes[i].kind == NodeKind::LayerNorm) aux[i].assign(2 * N, T(0));
  }
  row_loss.assign(static_cast<size_t>(N), T(0));
  cap = N;
}

template struct Workspace<float>;
template struct Workspace<double>;

}  // namespace lp
