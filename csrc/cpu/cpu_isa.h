// Which SIMD body a CPU kernel runs. The kernels compile their hot loops twice, for the baseline
// ISA and (GCC on x86-64) inside `#pragma GCC target("avx2,fma")`, and choose at run time, so one
// build is fast on AVX2 machines and still runs on any x86-64. NNCME_CPU_ISA=base forces the
// baseline body (tests use it to cover both).
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NNCME_HAVE_AVX2_BODY 1
#else
#define NNCME_HAVE_AVX2_BODY 0
#endif

namespace nncme {

enum class CpuIsa { kBase, kAvx2 };

inline CpuIsa cpu_isa() {
  const char* forced = std::getenv("NNCME_CPU_ISA");
  if (forced != nullptr && std::strcmp(forced, "base") == 0) return CpuIsa::kBase;
#if NNCME_HAVE_AVX2_BODY
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kBase;
}

}  // namespace nncme
