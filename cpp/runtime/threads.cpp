#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include "layerprop/common.hpp"

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

// OpenMP after fork: GNU libgomp's worker pool does not survive fork(). A child forked after
// the parent ran a parallel region (multiprocessing's default start method on Linux) blocks
// forever in the first region it enters. The child therefore runs every kernel serially:
// every region is entered only with more than one thread, so no libgomp state is touched.
namespace {
std::atomic<bool> g_pool_started{false};
std::atomic<bool> g_forked_after_pool{false};
void on_fork_child() {
  if (g_pool_started.load(std::memory_order_relaxed)) g_forked_after_pool.store(true);
}
const bool g_atfork_registered = [] { return pthread_atfork(nullptr, nullptr, on_fork_child) == 0; }();
}  // namespace

void note_parallel_region() {
  if (!g_pool_started.load(std::memory_order_relaxed)) g_pool_started.store(true);
}
bool forked_after_pool() { return g_forked_after_pool.load(std::memory_order_relaxed); }

int64_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || size <= 0) return 0;
  return static_cast<int64_t>(pages) * static_cast<int64_t>(size);
}

void check_allocation(int64_t bytes, const std::string& what) {
  const int64_t phys = physical_memory_bytes();
  if (bytes < 0 || (phys > 0 && bytes > phys))
    throw MemoryError(what + ": needs " + std::to_string(bytes) + " bytes, more than this machine's " +
                      std::to_string(phys) + " bytes of memory");
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
  if (forked_after_pool()) return 1;
  const int own = thread_setting().load();
  const int omp = omp_get_max_threads();
  return own < omp ? own : omp;
#else
  return 1;
#endif
}

}  // namespace lp
