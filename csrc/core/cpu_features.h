// Which instruction-set variant of a CPU kernel this machine can run (see core/cpu_variants.h).
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

// AVX-512 F/BW/DQ/VL (Intel since Skylake-SP, AMD since Zen 4), on top of the above.
inline bool cpu_has_avx512() {
#if defined(__x86_64__)
  static const bool yes = cpu_has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
#else
  return false;
#endif
}

}  // namespace mmm
