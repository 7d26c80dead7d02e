// The protocol between Python and the core, bound once: the codes (Act, NodeKind, LayerKind,
// LossKind, OptKind, ScheduleKind), which Python reads from _core and never re-declares, and
// the spec structs (LayerSpec, NodeSpec) with named fields. Each enum ends with a Count
// sentinel used by the range checks; it is not bound.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "layerprop/common.hpp"
#include "layerprop/model.hpp"
#include "layerprop/optim.hpp"

namespace py = pybind11;
using namespace lp;

namespace {
// A code from Python: an int in [0, Count), or ValueError naming the field.
template <class E>
E code_of(int v, const char* what) {
  if (v < 0 || v >= static_cast<int>(E::Count))
    throw ValueError(std::string(what) + ": unknown code " + std::to_string(v));
  return static_cast<E>(v);
}
}  // namespace

void bind_protocol(py::module_& m) {
  py::enum_<Act> act(m, "Act", "Activation functions of Activation nodes.");
#define LAYERPROP_ACT_VALUE(kind, file, functor) act.value(#kind, Act::kind);
  LAYERPROP_ACTIVATIONS(LAYERPROP_ACT_VALUE)
#undef LAYERPROP_ACT_VALUE
  py::enum_<NodeKind>(m, "NodeKind", "Kinds of graph nodes.")
      .value("Input", NodeKind::Input)
      .value("Linear", NodeKind::Linear)
      .value("Activation", NodeKind::Activation)
      .value("Add", NodeKind::Add)
      .value("Concat", NodeKind::Concat)
      .value("Dropout", NodeKind::Dropout)
      .value("BatchNorm", NodeKind::BatchNorm)
      .value("LayerNorm", NodeKind::LayerNorm);
  py::enum_<LayerKind>(m, "LayerKind", "Kinds of layers with parameters.")
      .value("Linear", LayerKind::Linear)
      .value("BatchNorm", LayerKind::BatchNorm)
      .value("LayerNorm", LayerKind::LayerNorm);
  py::enum_<LossKind>(m, "LossKind", "Losses.")
      .value("CrossEntropy", LossKind::CrossEntropy)
      .value("MSE", LossKind::MSE)
      .value("BCEWithLogits", LossKind::BCEWithLogits)
      .value("Poisson", LossKind::Poisson);
  py::enum_<kern::OptKind> opt(m, "OptKind", "Optimizers (None: no update).");
  opt.value("None_", kern::OptKind::None);
#define LAYERPROP_OPT_VALUE(kind, file, rule) opt.value(#kind, kern::OptKind::kind);
  LAYERPROP_OPTIMIZERS(LAYERPROP_OPT_VALUE)
#undef LAYERPROP_OPT_VALUE
  py::enum_<ScheduleKind>(m, "ScheduleKind", "Update schedules.")
      .value("Simultaneous", ScheduleKind::Simultaneous)
      .value("LayerwiseTopDown", ScheduleKind::LayerwiseTopDown)
      .value("LayerwiseBottomUp", ScheduleKind::LayerwiseBottomUp)
      .value("LocoPropS", ScheduleKind::LocoPropS)
      .value("LocoPropM", ScheduleKind::LocoPropM);

  py::class_<LayerSpec>(m, "LayerSpec", "A layer with parameters or statistics (a unit of the schedules).")
      .def(py::init([](int kind, int64_t in, int64_t out, bool bias, double eps, double momentum) {
             LayerSpec l;
             l.kind = code_of<LayerKind>(kind, "LayerSpec.kind");
             l.in = in;
             l.out = out;
             l.bias = bias;
             l.eps = eps;
             l.momentum = momentum;
             return l;
           }),
           py::kw_only(), py::arg("kind"), py::arg("in_features"), py::arg("out_features"), py::arg("bias") = true,
           py::arg("eps") = 1e-5, py::arg("momentum") = 0.1,
           "kind: LayerKind code; bias: Linear has a bias / BatchNorm is affine; eps, momentum: norm layers.")
      .def_property_readonly("kind", [](const LayerSpec& l) { return static_cast<int>(l.kind); })
      .def_readonly("in_features", &LayerSpec::in)
      .def_readonly("out_features", &LayerSpec::out)
      .def_readonly("bias", &LayerSpec::bias)
      .def_readonly("eps", &LayerSpec::eps)
      .def_readonly("momentum", &LayerSpec::momentum);
  py::class_<NodeSpec>(m, "NodeSpec", "A node of the graph, in topological order (node 0 the input).")
      .def(py::init([](int kind, std::vector<int> inputs, int64_t width, int layer, int act, double negative_slope,
                       double alpha, double beta, double threshold, double p) {
             NodeSpec s;
             s.kind = code_of<NodeKind>(kind, "NodeSpec.kind");
             s.inputs = std::move(inputs);
             s.width = width;
             s.layer = layer;
             s.act = code_of<Act>(act, "NodeSpec.act");
             s.act_settings.negative_slope = negative_slope;
             s.act_settings.alpha = alpha;
             s.act_settings.beta = beta;
             s.act_settings.threshold = threshold;
             s.p = p;
             return s;
           }),
           py::kw_only(), py::arg("kind"), py::arg("inputs") = std::vector<int>{}, py::arg("width"),
           py::arg("layer") = -1, py::arg("act") = 0, py::arg("negative_slope") = 0.01, py::arg("alpha") = 1.0,
           py::arg("beta") = 1.0, py::arg("threshold") = 20.0, py::arg("p") = 0.0,
           "kind: NodeKind code; inputs: earlier nodes; layer: index of its LayerSpec (Linear / norm nodes); "
           "act: Act code and its settings (negative_slope: LeakyReLU; alpha: ELU; beta, threshold: "
           "Softplus); p: Dropout's drop probability.")
      .def_property_readonly("kind", [](const NodeSpec& s) { return static_cast<int>(s.kind); })
      .def_readonly("inputs", &NodeSpec::inputs)
      .def_readonly("width", &NodeSpec::width)
      .def_readonly("layer", &NodeSpec::layer)
      .def_property_readonly("act", [](const NodeSpec& s) { return static_cast<int>(s.act); })
      .def_property_readonly("negative_slope", [](const NodeSpec& s) { return s.act_settings.negative_slope; })
      .def_property_readonly("alpha", [](const NodeSpec& s) { return s.act_settings.alpha; })
      .def_property_readonly("beta", [](const NodeSpec& s) { return s.act_settings.beta; })
      .def_property_readonly("threshold", [](const NodeSpec& s) { return s.act_settings.threshold; })
      .def_readonly("p", &NodeSpec::p);
}
