// Device primitives shared by the CUDA kernels: fp16/bf16 conversions, 128-bit chunk
// loads/stores with a scalar fallback, and warp/row reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "core/common.h"

namespace mmm {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename U> __device__ __forceinline__ U from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Whether every row of a tensor (base ptr, row_stride elements of elem bytes) starts 16-byte
// aligned: what load_chunk / store_chunk's `vec` promises. A null (absent) operand does not object.
MMM_HD bool rows_aligned(const void* ptr, int64_t row_stride, size_t elem) {
  return ptr == nullptr ||
         (reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (row_stride * int64_t(elem)) % 16 == 0);
}

// kVec consecutive elements of `row` starting at column c0, as fp32; columns >= n read as 0.
// `vec` promises that every row start is 16-byte aligned: then a full chunk is read with
// 128-bit loads, otherwise (misaligned views, the ragged end of a row) element by element.
template <int kVec, typename U>
__device__ __forceinline__ void load_chunk(float (&v)[kVec], const U* row, int64_t c0, int64_t n,
                                           bool vec) {
  constexpr int kPer16 = 16 / int(sizeof(U));
  static_assert((kVec * sizeof(U)) % 16 == 0, "a chunk must be whole 128-bit words");
  if (vec && c0 + kVec <= n) {
    const uint4* src = reinterpret_cast<const uint4*>(row + c0);
#pragma unroll
    for (int q = 0; q < kVec / kPer16; ++q) {
      const uint4 raw = src[q];
      const U* e = reinterpret_cast<const U*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer16; ++i) v[q * kPer16 + i] = to_f(e[i]);
    }
  } else {  // a thread's elements kVec apart across the warp: known uncoalesced (the fallback)
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = c0 + i < n ? to_f(row[c0 + i]) : 0.f;  // known uncoalesced
  }
}

template <int kVec, typename U>
__device__ __forceinline__ void store_chunk(U* row, const float (&v)[kVec], int64_t c0, int64_t n,
                                            bool vec) {
  constexpr int kPer16 = 16 / int(sizeof(U));
  static_assert((kVec * sizeof(U)) % 16 == 0, "a chunk must be whole 128-bit words");
  if (vec && c0 + kVec <= n) {
    uint4* dst = reinterpret_cast<uint4*>(row + c0);
#pragma unroll
    for (int q = 0; q < kVec / kPer16; ++q) {
      uint4 raw;
      U* e = reinterpret_cast<U*>(&raw);
#pragma unroll
      for (int i = 0; i < kPer16; ++i) e[i] = from_f<U>(v[q * kPer16 + i]);
      dst[q] = raw;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      if (c0 + i < n) row[c0 + i] = from_f<U>(v[i]);  // known uncoalesced (as in load_chunk)
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Sum over the kWarps warps that share one row: a CTA of exactly kWarps warps, all of which
// must call it (it synchronises). `smem` holds kWarps floats. Every warp reduces the partials
// itself, in the same order, so the result is identical in every thread and run to run.
template <int kWarps>
__device__ __forceinline__ float row_sum(float v, float* smem) {
  v = warp_sum(v);
  if constexpr (kWarps == 1) {
    return v;
  } else {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    float s = lane < kWarps ? smem[lane] : 0.f;
    s = warp_sum(s);
    __syncthreads();  // smem is reused by the next reduction
    return s;
  }
}

}  // namespace mmm
