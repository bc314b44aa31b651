// Which instruction-set variant of a CPU kernel this machine can run (see core/cpu_variants.h).
// MMM_CPU_ISA=base or avx2 (read once) caps the choice below the machine's best, so that the
// tests can run every copy on one machine; unset or any other value: no cap.
#pragma once
#include <cstdlib>
#include <cstring>

namespace mmm {

inline int cpu_isa_cap() {  // 0 baseline, 1 AVX2, 2 AVX-512
  static const int cap = [] {
    const char* v = std::getenv("MMM_CPU_ISA");
    return !v ? 2 : std::strcmp(v, "base") == 0 ? 0 : std::strcmp(v, "avx2") == 0 ? 1 : 2;
  }();
  return cap;
}

inline bool cpu_has_avx2_fma_f16c() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_cap() >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
#else
  return false;
#endif
}

// AVX-512 F/BW/DQ/VL (Intel since Skylake-SP, AMD since Zen 4), on top of the above.
inline bool cpu_has_avx512() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_cap() >= 2 && cpu_has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
#else
  return false;
#endif
}

// The copy MMM_CPU_VARIANT calls here: 0 baseline, 1 AVX2, 2 AVX-512.
inline int cpu_variant() { return cpu_has_avx512() ? 2 : cpu_has_avx2_fma_f16c() ? 1 : 0; }

}  // namespace mmm
