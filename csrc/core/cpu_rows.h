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
    for (; j < n; ++j) dst[j] = static_cast<C>(::mmm::to_float(src[j]));
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
    for (; j < n; ++j) dst[j] = ::mmm::from_float<::mmm::Half>(static_cast<float>(src[j]));
  }
}

// Asks for a row's cache lines ahead of its use: hardware prefetchers lose the stream between
// the many short passes over each row.
template <typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < n * int64_t(sizeof(T)); off += 64) __builtin_prefetch(p + off);
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

// ---- Blocks of kW floats held in registers -------------------------------------------------
// One vector register per block: 16 lanes in the AVX-512 variant (MMM_CPU_AVX512), 8 in the
// AVX2 one (MMM_CPU_F16C), 4 (SSE2) otherwise, as GCC vector types so +, -, *, ?: compile to that
// ISA. vload/vstore convert kW elements of a storage type; vstore also returns what it stored,
// read back as float (the value rounded to T), without a trip through memory.

#if defined(MMM_CPU_AVX512)
inline constexpr int kW = 16;
#elif defined(MMM_CPU_F16C)
inline constexpr int kW = 8;
#else
inline constexpr int kW = 4;
#endif
typedef float VF __attribute__((vector_size(kW * sizeof(float))));
typedef uint32_t VU __attribute__((vector_size(kW * sizeof(uint32_t))));

inline VF vsplat(float f) { return VF{} + f; }
inline float vsum(VF v) {  // fixed order: deterministic
  float s = v[0];
  for (int l = 1; l < kW; ++l) s += v[l];
  return s;
}

inline VF vload(const float* p) { VF v; std::memcpy(&v, p, sizeof v); return v; }
inline VF vload(const ::mmm::BFloat16* p) {
#if defined(MMM_CPU_AVX512)
  return (VF)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#elif defined(MMM_CPU_F16C)
  return (VF)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
#else
  VU u;
  for (int l = 0; l < kW; ++l) u[l] = uint32_t(p[l].bits) << 16;
  return (VF)u;
#endif
}
inline VF vload(const ::mmm::Half* p) {
#if defined(MMM_CPU_AVX512)
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(MMM_CPU_F16C)
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  VF v;
  for (int l = 0; l < kW; ++l) v[l] = ::mmm::to_float(p[l]);
  return v;
#endif
}

inline VF vstore(float* p, VF v) { std::memcpy(p, &v, sizeof v); return v; }
inline VF vstore(::mmm::BFloat16* p, VF v) {  // round to nearest even; NaN stays a (quiet) NaN
  const VU u = (VU)v;
  const VU rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const VU bits = (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded;
#if defined(MMM_CPU_AVX512)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16((__m512i)bits));
#elif defined(MMM_CPU_F16C)
  const __m256i b = (__m256i)bits;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
#else
  for (int l = 0; l < kW; ++l) p[l].bits = uint16_t(bits[l]);
#endif
  return (VF)(bits << 16);
}
inline VF vstore(::mmm::Half* p, VF v) {
#if defined(MMM_CPU_AVX512)
  const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  return _mm512_cvtph_ps(h);
#elif defined(MMM_CPU_F16C)
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  return _mm256_cvtph_ps(h);
#else
  VF r;
  for (int l = 0; l < kW; ++l) {
    p[l] = ::mmm::from_float<::mmm::Half>(v[l]);
    r[l] = ::mmm::to_float(p[l]);
  }
  return r;
#endif
}

// The same one element at a time, for the tail of a row.
template <typename T>
inline float sload(const T* p) { return ::mmm::to_float(*p); }
template <typename T>
inline float sstore(T* p, float v) { *p = ::mmm::from_float<T>(v); return ::mmm::to_float(*p); }
