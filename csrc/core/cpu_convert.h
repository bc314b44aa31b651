// Scalar fp16/bf16 <-> fp32 conversions for one CPU copy: core/cpu_variants.h includes this inside
// each of its namespaces, before the implementation (so no include guard and no includes).
// widen / narrow<T> are core/numeric.h's to_float / from_float<T> (the same rounding, to nearest
// even), but in the copies that may use F16C an fp16 conversion is one instruction: the
// portable one branches on subnormals, infinities and NaN, and made the fp16 block GEMM, which
// converts every element it packs, four times slower than fp32 (AVX2, 1024 x 1024 features).
// A NaN stays a NaN; its payload may differ between the copies.

inline float widen(float v) { return v; }
inline float widen(::mmm::BFloat16 v) { return ::mmm::to_float(v); }
inline float widen(::mmm::Half v) {
#if defined(MMM_CPU_F16C)
  return _cvtsh_ss(v.bits);
#else
  return ::mmm::to_float(v);
#endif
}

template <typename T>
inline T narrow(float f) {
#if defined(MMM_CPU_F16C)
  if constexpr (std::is_same_v<T, ::mmm::Half>)
    return ::mmm::Half{static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT))};
#endif
  return ::mmm::from_float<T>(f);
}
