// Which instruction-set variant of a CPU kernel this machine can run. The CPU kernels are
// compiled for baseline x86-64 and for AVX2 + FMA + F16C (x86-64-v3) in one translation unit
// each, and pick at run time, so a portable wheel still runs at the machine's speed.
#pragma once

namespace mmm {

inline bool cpu_has_avx2_fma_f16c() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
#else
  return false;
#endif
}

}  // namespace mmm
