// The codes Python and the core share, bound once: Python reads them from _core (Act, NodeKind,
// LayerKind, LossKind, OptKind, ScheduleKind) and never re-declares them. Each enum ends with
// a Count sentinel used by the range checks; it is not bound.
#include <pybind11/pybind11.h>

#include "layerprop/common.hpp"
#include "layerprop/model.hpp"
#include "layerprop/optim.hpp"

namespace py = pybind11;
using namespace lp;

void bind_enums(py::module_& m) {
  py::enum_<Act>(m, "Act", "Activation functions of Activation nodes.")
      .value("Identity", Act::Identity)
      .value("ReLU", Act::ReLU)
      .value("LeakyReLU", Act::LeakyReLU)
      .value("Tanh", Act::Tanh)
      .value("Sigmoid", Act::Sigmoid)
      .value("GELU", Act::GELU);
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
}
