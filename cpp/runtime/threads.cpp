#include <atomic>
#include <cstdlib>
#include <thread>

#include "layerprop/runtime.hpp"
#ifdef LAYERPROP_HAVE_OPENMP
#include <omp.h>
#endif

namespace lp {

static int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
#ifdef LAYERPROP_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

[[maybe_unused]] static std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

bool have_openmp() {
#ifdef LAYERPROP_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

void set_num_threads(int n) {
#ifdef LAYERPROP_HAVE_OPENMP
  n = n < 1 ? 1 : n;
  thread_setting().store(n);
#else
  (void)n;
#endif
}

// Our own setting, capped by the calling thread's OpenMP limit: a limit set from outside
// (threadpoolctl, omp_set_num_threads in another library) is honoured.
int get_num_threads() {
#ifdef LAYERPROP_HAVE_OPENMP
  const int own = thread_setting().load();
  const int omp = omp_get_max_threads();
  return own < omp ? own : omp;
#else
  return 1;
#endif
}

}  // namespace lp
