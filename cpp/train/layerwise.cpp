// Layerwise: one unit (a layer with parameters) at a time; before its update, its gradient is
// computed with every already-updated unit's new weights. Only what changed is recomputed: the
// forward from the last updated unit up, the backward from the loss down to the unit being
// updated. top_down visits the units from the output back, bottom_up from the input on.
#include <algorithm>

#include "train/schedules.hpp"

namespace lp {
namespace {

template <class T>
class Layerwise final : public Schedule<T> {
 public:
  explicit Layerwise(bool top_down) : top_down_(top_down) {}

  double step(Model<T>& m, const T* x, int64_t N, Labels<T> y, int& fault) override {
    m.reset_ops();
    std::vector<int> units = m.units();  // topological order
    if (top_down_) std::reverse(units.begin(), units.end());
    const bool training = m.training();
    double first_loss = 0;
    int dirty_from = 1;  // nodes >= dirty_from must be recomputed before the next gradient
    bool first = true;
    for (int L : units) {
      m.forward(x, N, FwdMode{training, training && first, !first}, dirty_from);
      const double loss = m.loss_and_seed(N, y, true);
      if (first) first_loss = m.dp_begin(N, y, loss);  // data-parallel: the batch's loss
      first = false;
      const int node = m.layer_nodes(L).front();
      m.backward(N, node, L);
      m.dp_average(L);  // data-parallel: the batch's mean gradient of this layer
      m.apply_layer(L);
      dirty_from = node;
    }
    if (units.empty()) {
      m.forward(x, N, FwdMode{training, training, false});
      first_loss = m.loss_and_seed(N, y, false);
    }
    fault = 0;  // judged by the model on the whole step (updates_inside_step)
    return first_loss;
  }

 private:
  bool top_down_;
};

}  // namespace

template <class T>
std::unique_ptr<Schedule<T>> make_layerwise(const ScheduleConfig& cfg) {
  return std::make_unique<Layerwise<T>>(cfg.kind == ScheduleKind::LayerwiseTopDown);
}
template std::unique_ptr<Schedule<float>> make_layerwise<float>(const ScheduleConfig&);
template std::unique_ptr<Schedule<double>> make_layerwise<double>(const ScheduleConfig&);

}  // namespace lp
