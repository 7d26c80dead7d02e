#include "layerprop/runtime.hpp"

namespace lp {

static CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool use_avx2() {
#ifdef LAYERPROP_HAVE_AVX2
  static const bool on = [] {
    const char* env = std::getenv("LAYERPROP_SIMD");  // "scalar" forces the portable kernels
    if (env && std::string(env) == "scalar") return false;
    return cpu_features().avx2 && cpu_features().fma;
  }();
  return on;
#else
  return false;
#endif
}

bool use_avx512() {
#ifdef LAYERPROP_HAVE_AVX512
  static const bool on = [] {
    const char* env = std::getenv("LAYERPROP_SIMD");  // "avx2" keeps to the AVX2 kernels
    if (env && std::string(env) == "avx2") return false;
    return use_avx2() && cpu_features().avx512f;
  }();
  return on;
#else
  return false;
#endif
}

std::string simd_name() { return use_avx2() ? "avx2+fma" : "scalar"; }

}  // namespace lp
