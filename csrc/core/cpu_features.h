// Which instruction-set variant of a CPU kernel this machine can run (see core/cpu_variants.h).
// MMM_CPU_ISA=base, avx2 or avx512 (read once) caps the choice below the machine's best, so that
// the tests can run every copy on one machine; unset or any other value: no cap.
#pragma once
#include <cstdlib>
#include <cstring>

namespace mmm {

inline int cpu_isa_cap() {  // 0 baseline, 1 AVX2, 2 AVX-512, 3 AVX-512 with BF16 dot products
  static const int cap = [] {
    const char* v = std::getenv("MMM_CPU_ISA");
    if (!v) return 3;
    return std::strcmp(v, "base") == 0 ? 0 : std::strcmp(v, "avx2") == 0 ? 1 : std::strcmp(v, "avx512") == 0 ? 2 : 3;
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

// AVX512_BF16 (Intel since Cooper Lake, AMD since Zen 4): vdpbf16ps, a dot product of bf16 pairs
// into fp32 lanes, twice the multiplies of an fp32 FMA. Not a copy of its own: the AVX-512 copy's
// bf16 GEMMs branch on it (core/cpu_gemm.h, CpuGemmBf16).
inline bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_cap() >= 3 && cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

// What MMM_CPU_VARIANT runs here: 0 baseline, 1 AVX2, 2 AVX-512, 3 AVX-512 with bf16 dot products.
inline int cpu_variant() {
  return cpu_has_avx512_bf16() ? 3 : cpu_has_avx512() ? 2 : cpu_has_avx2_fma_f16c() ? 1 : 0;
}

}  // namespace mmm
