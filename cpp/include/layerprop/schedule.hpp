// The update-schedule interface. A schedule turns one staged batch into one training step by
// driving the model's public parts (cpp/include/layerprop/model.hpp, "the parts a schedule
// drives"): forward, loss, backward, the parameter and gradient store, the node workspace and
// the optimizer's per-layer step. Each schedule lives in its own file under cpp/train/ and is
// registered by one line in cpp/train/schedules.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "layerprop/common.hpp"

namespace lp {

template <class T>
class Model;
template <class T>
struct Labels;
struct ScheduleConfig;

template <class T>
class Schedule {
 public:
  virtual ~Schedule() = default;
  // One training step on the staged batch x (N rows; the model's input pointer or its sparse
  // marker) with staged labels y. Returns the loss before the update. fault: 0, 1 for a
  // non-finite loss, 2 for a non-finite gradient (a schedule that reports a fault has applied
  // nothing).
  virtual double step(Model<T>& m, const T* x, int64_t N, Labels<T> y, int& fault) = 0;
  // True when the schedule updates parameters inside step() (before it can know whether the
  // whole step is finite): the model then keeps a copy of everything the step may change and
  // puts it back on a fault.
  virtual bool updates_inside_step() const { return true; }
  // Refuses (ValueError) a graph this schedule cannot train; called by compile.
  virtual void validate(const Model<T>& m) const {}
  // Stored layers this schedule treats differently from its rule for this graph (LocoProp M:
  // the Linear layers whose target falls back to S's), for the Python side to warn about.
  virtual std::vector<int> fallbacks(const Model<T>& m) const { return {}; }
};

// The schedule of a configuration (cpp/train/schedules.cpp).
template <class T>
std::unique_ptr<Schedule<T>> make_schedule(const ScheduleConfig& cfg);

}  // namespace lp
