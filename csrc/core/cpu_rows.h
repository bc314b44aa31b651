// Row helpers for the CPU twins: fp16/bf16/fp32/fp64 <-> the compute type (fp32, or fp64) as
// plain loops the compiler vectorises, with F16C intrinsics for fp16 in the AVX2 variant, and a
// lane-split sum.
//
// Included INSIDE each per-ISA namespace of a CPU kernel (see fused_add_norm_cpu.cpp), after
// <cstring>, <type_traits>, core/numeric.h and (x86) <immintrin.h>: so it has no include guard
// and no includes, and MMM_CPU_F16C says whether this copy may use F16C.

template <typename T, typename C>
inline void load_row(const T* __restrict src, C* __restrict dst, int64_t n) {
  if constexpr (std::is_same_v<T, C> || std::is_arithmetic_v<T>) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<C>(src[j]);
  } else if constexpr (std::is_same_v<T, ::mmm::BFloat16>) {
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t u = uint32_t(src[j].bits) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      dst[j] = static_cast<C>(f);
    }
  } else {  // Half
    int64_t j = 0;
#if defined(MMM_CPU_F16C)
    if constexpr (std::is_same_v<C, float>)
      for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
#endif
    for (; j < n; ++j) dst[j] = static_cast<C>(widen(src[j]));
  }
}

template <typename T, typename C>
inline void store_row(const C* __restrict src, T* __restrict dst, int64_t n) {
  if constexpr (std::is_same_v<T, C> || std::is_arithmetic_v<T>) {
    for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
  } else if constexpr (std::is_same_v<T, ::mmm::BFloat16>) {
    for (int64_t j = 0; j < n; ++j) {  // round to nearest even; NaN stays a (quiet) NaN
      const float f = static_cast<float>(src[j]);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
      dst[j].bits = uint16_t((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
    }
  } else {  // Half
    int64_t j = 0;
#if defined(MMM_CPU_F16C)
    if constexpr (std::is_same_v<C, float>)
      for (; j + 8 <= n; j += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; j < n; ++j) dst[j] = narrow<::mmm::Half>(static_cast<float>(src[j]));
  }
}

// Sum of term(j) over j < n with kLanes independent partial sums: vectorises without
// reassociation flags, and each lane adds only n/kLanes terms, which keeps long rows accurate.
template <typename C, typename F>
inline C lane_sum(int64_t n, F&& term) {
  constexpr int kLanes = 16;
  C acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(j + l);
  for (; j < n; ++j) acc[0] += term(j);
  C s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}
