// Run-time facts: CPU features chosen for the kernels, and the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#ifdef LAYERPROP_HAVE_OPENMP
#include <omp.h>
#endif

namespace lp {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
};
const CpuFeatures& cpu_features();
// True when the AVX2+FMA kernels are compiled in and the CPU runs them.
bool use_avx2();
// "avx2+fma" or "scalar": what the kernels actually run.
std::string simd_name();

bool have_openmp();
// Called before entering a parallel region with more than one thread.
void note_parallel_region();
// True in a process forked after this one's parent had started OpenMP's worker pool: such a
// child runs serially (get_num_threads() == 1), since the pool cannot be used there.
bool forked_after_pool();
void set_num_threads(int n);
int get_num_threads();
// Threads for a loop of `work` units (roughly flops or bytes): 1 below `threshold`.
// Inside an active parallel region (LocoProp's per-layer problems) everything runs serially.
inline int threads_for(int64_t work, int64_t threshold) {
#ifdef LAYERPROP_HAVE_OPENMP
  if (omp_in_parallel()) return 1;
#endif
  if (work < threshold) return 1;
  const int nt = get_num_threads();
  if (nt > 1) note_parallel_region();
  return nt;
}

// body(begin, end) over [0, n) split into one contiguous range per thread (multiples of 64
// elements). Below `threshold` units of work it runs inline, without entering OpenMP at all:
// tiny models pay nothing for threading. Element-wise bodies give the same result for every
// element whatever the split, so results never depend on the thread count.
template <class F>
inline void parallel_range(int64_t n, int64_t work, int64_t threshold, F&& body) {
  const int nt = threads_for(work, threshold);
  if (nt <= 1 || n < 128) {
    body(int64_t(0), n);
    return;
  }
#ifdef LAYERPROP_HAVE_OPENMP
#pragma omp parallel num_threads(nt)
  {
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = ((n + T - 1) / T + 63) / 64 * 64;
    const int64_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
    if (b < e) body(b, e);
  }
#else
  body(int64_t(0), n);
#endif
}

}  // namespace lp
