// Test hooks: the core's parts on their own, without a Model. _graph builds the Graph part
// from specs (its checks and what it derives), _param_layout lays out the ParamStore part,
// _workspace sizes the Workspace part for N rows.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "layerprop/graph.hpp"

namespace py = pybind11;
using namespace lp;

void bind_parts(py::module_& m) {
  m.def("_graph", [](const std::vector<LayerSpec>& layers, const std::vector<NodeSpec>& nodes, int output) {
    const Graph g(layers, nodes, output);
    py::dict d;
    d["consumers"] = g.consumers;
    d["layer_nodes"] = g.layer_nodes;
    std::vector<bool> needs(g.needs_grad.begin(), g.needs_grad.end()), fused(g.fused.begin(), g.fused.end());
    d["needs_grad"] = needs;
    d["fused_into"] = g.fused_into;
    d["fused"] = fused;
    d["input_linear_only"] = g.input_linear_only;
    return d;
  }, py::arg("layers"), py::arg("nodes"), py::arg("output"),
     "The Graph part built from specs: its derived tables (tests). ValueError for a graph the core cannot run.");
  m.def("_param_layout", [](const std::vector<LayerSpec>& layers, const std::vector<NodeSpec>& nodes, int output) {
    const Graph g(layers, nodes, output);
    const ParamStore<float> ps(g);
    py::list tensors, buffers;
    for (const auto& t : ps.tensors) tensors.append(py::make_tuple(t.layer, t.name, t.offset, t.rows, t.cols));
    for (const auto& t : ps.buffer_tensors) buffers.append(py::make_tuple(t.layer, t.name, t.offset, t.rows, t.cols));
    py::dict d;
    d["tensors"] = tensors;
    d["buffers"] = buffers;
    d["n_params"] = ps.params.size();
    d["buffer_values"] = std::vector<float>(ps.buffers.begin(), ps.buffers.end());
    return d;
  }, py::arg("layers"), py::arg("nodes"), py::arg("output"),
     "The ParamStore part's tensor table for a graph (tests).");
  m.def("_workspace", [](const std::vector<LayerSpec>& layers, const std::vector<NodeSpec>& nodes, int output,
                         int64_t rows) {
    if (rows < 0) throw ValueError("rows: expected >= 0");
    const Graph g(layers, nodes, output);
    Workspace<float> ws;
    ws.ensure(g, rows);
    std::vector<int64_t> outs, gouts, aux;
    for (size_t i = 0; i < ws.outs.size(); ++i) {
      outs.push_back(static_cast<int64_t>(ws.outs[i].size()));
      gouts.push_back(static_cast<int64_t>(ws.gouts[i].size()));
      aux.push_back(static_cast<int64_t>(ws.aux[i].size()));
    }
    py::dict d;
    d["cap"] = ws.cap;
    d["outs"] = outs;
    d["gouts"] = gouts;
    d["aux"] = aux;
    return d;
  }, py::arg("layers"), py::arg("nodes"), py::arg("output"), py::arg("rows"),
     "The Workspace part's buffer sizes (elements) for `rows` rows (tests); MemoryError beyond this machine.");
}
