// What a schedule's file needs: the model's public parts and the interface. Each schedule
// file defines one factory; the registry (schedules.cpp) lists them.
#pragma once
#include <memory>

#include "layerprop/model.hpp"
#include "layerprop/schedule.hpp"

namespace lp {

template <class T>
std::unique_ptr<Schedule<T>> make_simultaneous(const ScheduleConfig& cfg);
template <class T>
std::unique_ptr<Schedule<T>> make_layerwise(const ScheduleConfig& cfg);
template <class T>
std::unique_ptr<Schedule<T>> make_locoprop(const ScheduleConfig& cfg);

}  // namespace lp
