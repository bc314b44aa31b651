// Typed host buffers for the emulation drivers: fp32 / fp16 / bf16 elements in 16-byte aligned
// storage (the kernels' vector paths need aligned rows), read and written as float through the
// bit-exact conversions of core/numeric.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/common.h"
#include "core/numeric.h"

inline size_t esz(mmm::DType t) { return t == mmm::DType::kFloat32 ? 4 : 2; }
inline const char* tname(mmm::DType t) {
  return t == mmm::DType::kFloat32 ? "f32" : t == mmm::DType::kFloat16 ? "f16" : "bf16";
}
// The type's rounding unit (one ulp at 1): 2^-10 fp16, 2^-7 bf16; 0 for fp32, which the drivers
// compare with fp32 noise terms only.
inline double eps_of(mmm::DType t) { return t == mmm::DType::kFloat32 ? 0 : t == mmm::DType::kFloat16 ? 0x1p-10 : 0x1p-7; }

struct Buffer {  // `bytes` bytes, 16-byte aligned, plus one chunk of slack
  struct alignas(16) Chunk { unsigned char b[16]; };
  std::vector<Chunk> store;
  size_t bytes = 0;
  explicit Buffer(size_t n = 0, unsigned char fill = 0) : store((n + 15) / 16 + 1), bytes(n) {
    std::memset(store.data(), fill, store.size() * 16);
  }
  char* data() { return reinterpret_cast<char*>(store.data()); }
  const char* data() const { return reinterpret_cast<const char*>(store.data()); }
  bool operator==(const Buffer& o) const { return bytes == o.bytes && std::memcmp(data(), o.data(), bytes) == 0; }
};
inline float get(mmm::DType t, const Buffer& v, int64_t i) {
  if (t == mmm::DType::kFloat32) return reinterpret_cast<const float*>(v.data())[i];
  const uint16_t b = reinterpret_cast<const uint16_t*>(v.data())[i];
  return t == mmm::DType::kFloat16 ? mmm::to_float(mmm::Half{b}) : mmm::to_float(mmm::BFloat16{b});
}
inline void set(mmm::DType t, Buffer& v, int64_t i, float f) {
  if (t == mmm::DType::kFloat32) reinterpret_cast<float*>(v.data())[i] = f;
  else if (t == mmm::DType::kFloat16) reinterpret_cast<mmm::Half*>(v.data())[i] = mmm::from_float<mmm::Half>(f);
  else reinterpret_cast<mmm::BFloat16*>(v.data())[i] = mmm::from_float<mmm::BFloat16>(f);
}
// n elements drawn from N(mu, sigma^2), rounded to the type.
inline Buffer random_buffer(std::mt19937& rng, mmm::DType t, int64_t n, float mu = 0, float sigma = 1) {
  Buffer v(size_t(n) * esz(t));
  std::normal_distribution<float> nd(mu, sigma);
  for (int64_t i = 0; i < n; ++i) set(t, v, i, nd(rng));
  return v;
}
