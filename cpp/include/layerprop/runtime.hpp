// Run-time facts: CPU features chosen for the kernels, and the thread count.
#pragma once
#include <cstdint>
#include <string>

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
void set_num_threads(int n);
int get_num_threads();
// Threads for a loop of `work` units (roughly flops or bytes): 1 below `threshold`.
inline int threads_for(int64_t work, int64_t threshold) {
  return work >= threshold ? get_num_threads() : 1;
}

}  // namespace lp
