// Host-side fp16/bf16 <-> fp32 conversions for the CPU twins, without CUDA or torch headers.
// Round-to-nearest-even on the way down, the same rounding the GPU's cvt.rn uses, so CPU and CUDA
// results agree bit for bit wherever the float math agrees.
#pragma once
#include <cstdint>
#include <cstring>

namespace mmm {

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(float v) { return v; }
inline float to_float(double v) { return static_cast<float>(v); }
inline float to_float(BFloat16 v) { return bits_to_float(uint32_t(v.bits) << 16); }
inline float to_float(Half v) {
  const uint32_t sign = uint32_t(v.bits & 0x8000) << 16;
  uint32_t exp = (v.bits >> 10) & 0x1f, man = v.bits & 0x3ff;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // Subnormal half: value = man * 2^-24, exact in float.
    const float f = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

template <typename T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline double from_float<double>(float f) { return f; }
template <> inline BFloat16 from_float<BFloat16>(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((u >> 16) | 0x40)};  // quiet nan
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{uint16_t(u >> 16)};
}
template <> inline Half from_float<Half>(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return Half{uint16_t(sign | 0x7e00)};        // nan
  if (au >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00)};       // rounds to inf
  if (au < 0x38800000u) {                                            // subnormal or zero
    // Adding 0.5 shifts the significand so that the float adder rounds to nearest even for us.
    const float a = bits_to_float(au) + 0.5f;
    return Half{uint16_t(sign | (float_to_bits(a) - 0x3f000000u))};
  }
  uint32_t r = au + 0xc8000fffu + ((au >> 13) & 1u);  // rebias exponent by -112, round to even
  return Half{uint16_t(sign | (r >> 13))};
}

}  // namespace mmm
