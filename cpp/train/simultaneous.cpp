// Simultaneous: standard backprop. One forward and backward give every gradient; then every
// parameter is updated. Nothing changes before the gradients are known to be finite.
#include "train/schedules.hpp"

namespace lp {
namespace {

template <class T>
class Simultaneous final : public Schedule<T> {
 public:
  double step(Model<T>& m, const T* x, int64_t N, Labels<T> y, int& fault) override {
    const double loss = m.gradients(x, N, y, true);
    fault = m.gradients_fault();
    if (!fault) m.apply_gradients();
    return loss;
  }
  bool updates_inside_step() const override { return false; }
};

}  // namespace

template <class T>
std::unique_ptr<Schedule<T>> make_simultaneous(const ScheduleConfig&) {
  return std::make_unique<Simultaneous<T>>();
}
template std::unique_ptr<Schedule<float>> make_simultaneous<float>(const ScheduleConfig&);
template std::unique_ptr<Schedule<double>> make_simultaneous<double>(const ScheduleConfig&);

}  // namespace lp
