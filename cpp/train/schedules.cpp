// The schedule registry: one line per schedule kind (its file is cpp/train/<name>.cpp).
#include "train/schedules.hpp"

namespace lp {

template <class T>
std::unique_ptr<Schedule<T>> make_schedule(const ScheduleConfig& cfg) {
  switch (cfg.kind) {
    case ScheduleKind::Simultaneous: return make_simultaneous<T>(cfg);
    case ScheduleKind::LayerwiseTopDown:
    case ScheduleKind::LayerwiseBottomUp: return make_layerwise<T>(cfg);
    case ScheduleKind::LocoPropS:
    case ScheduleKind::LocoPropM: return make_locoprop<T>(cfg);
    default: throw ValueError("schedule: unknown kind " + std::to_string(static_cast<int>(cfg.kind)));
  }
}
template std::unique_ptr<Schedule<float>> make_schedule<float>(const ScheduleConfig&);
template std::unique_ptr<Schedule<double>> make_schedule<double>(const ScheduleConfig&);

}  // namespace lp
