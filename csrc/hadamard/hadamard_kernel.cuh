// Fast Walsh-Hadamard transform kernels (fp32 arithmetic whatever the storage type).
//
//   hadamard_segment_kernel  one CTA transforms one power-of-two segment of a row (the whole
//                            row when it fits): each thread holds 8 consecutive elements per
//                            chunk in registers; strides 1-4 are butterflies in registers,
//                            strides 8-128 warp shuffles between lanes, and only strides >= 256
//                            go through shared memory, one barrier per stage.
//   hadamard_columns_kernel  rows longer than one CTA's shared memory: H_m = H_a (x) H_b, so after
//                            the segment kernel has applied H_b to each of the a segments, a
//                            thread per (row, column) applies H_a across them in registers.
#pragma once
#include "core/cuda_utils.cuh"

namespace mmm {

struct HadamardTile {
  static constexpr int kChunk = 8;          // elements per thread per chunk
  static constexpr int kMaxThreads = 1024;
  static constexpr int kMaxChunks = 4;      // per thread: segments up to 32768 elements
  static constexpr int64_t kMaxSegment = int64_t(kChunk) * kMaxThreads * kMaxChunks;
  static constexpr int kRegisterOnly = kChunk * 32;  // segments this short need no shared memory
};

// in: a row's elements >= in_n read as zero (the implicit padding); out: only elements < out_n
// are written. seg_len is a power of two <= kMaxSegment; blockDim.x = clamp(seg_len / 8, 32, 1024).
// vec_in / vec_out: every row of in / out starts 16-byte aligned (rows_aligned, from the launcher),
// so chunks move as 16-byte loads / stores; element by element otherwise and at a row's ragged end.
// Inside a segment every index is a 32-bit int and the shared-memory stage addresses by masks:
// 1024 threads leave 64 registers per thread, 32 of them the data, and 64-bit index arithmetic
// spilled (256 bytes per thread for fp32 on sm_80).
// A chunk goes to and from shared memory as two 16-byte accesses. Element e lives at slot
// e ^ (bit 5 of e) << 2 (hadamard_slot): a chunk's halves swap places in every second group of
// four chunks, so the 8 lanes of each quarter warp hit 8 distinct 16-byte bank groups (in natural
// order lanes 4 apart collide: 2-way; as 8 scalar accesses, 8-way), while a stage's runs of
// consecutive elements, permuted only inside aligned groups of 8, still hit 32 distinct banks.
__device__ __forceinline__ int hadamard_slot(int e) { return e ^ ((e >> 3) & 4); }

template <typename TI, typename TO>
__global__ void __launch_bounds__(HadamardTile::kMaxThreads)
    hadamard_segment_kernel(const TI* in, int64_t in_rs, int64_t in_n, TO* out, int64_t out_rs, int64_t out_n,
                            int64_t rows, int64_t seg_len, int64_t segs_per_row, float scale, bool vec_in,
                            bool vec_out) {
  constexpr int kC = HadamardTile::kChunk, kK = HadamardTile::kMaxChunks;
  extern __shared__ __align__(16) float smem[];  // (seg_len,) when seg_len > kRegisterOnly
  const int nthreads = blockDim.x, tid = threadIdx.x, lane = tid % 32;
  const int L = int(seg_len);
  for (int64_t seg = blockIdx.x; seg < rows * segs_per_row; seg += gridDim.x) {
    const int64_t row = seg / segs_per_row, base = (seg % segs_per_row) * seg_len;
    // Elements of this segment that exist in the input / are written to the output.
    const auto part = [&](int64_t n) { return int(n <= base ? 0 : n - base < seg_len ? n - base : seg_len); };
    const int in_len = part(in_n), out_len = part(out_n);
    const TI* src = in + row * in_rs + base;
    float v[kK][kC];  // chunk c = k * nthreads + tid holds elements c*8 .. c*8+7 of the segment
#pragma unroll
    for (int k = 0; k < kK; ++k) load_chunk<kC>(v[k], src, (k * nthreads + tid) * kC, in_len, vec_in);
    // Strides 1, 2, 4: inside a chunk.
#pragma unroll
    for (int h = 1; h < kC; h *= 2) {
      if (h >= L) break;
#pragma unroll
      for (int k = 0; k < kK; ++k)
#pragma unroll
        for (int i = 0; i < kC; ++i)
          if ((i & h) == 0) {
            const float a = v[k][i], b = v[k][i + h];
            v[k][i] = a + b;
            v[k][i + h] = a - b;
          }
    }
    // Strides 8 .. 128: chunk c's partner c ^ bit lives in lane ^ bit (nthreads is a multiple
    // of 32). Every lane shuffles; lanes past the segment hold zeros nobody valid reads.
#pragma unroll
    for (int bit = 1; bit < 32; bit *= 2) {
      if (kC * bit >= L) break;
#pragma unroll
      for (int k = 0; k < kK; ++k)
#pragma unroll
        for (int i = 0; i < kC; ++i) {
          const float other = __shfl_xor_sync(0xffffffffu, v[k][i], bit);
          v[k][i] = (lane & bit) ? other - v[k][i] : v[k][i] + other;
        }
    }
    // Strides >= 256: between warps and between a thread's chunks, through shared memory.
    if (L > HadamardTile::kRegisterOnly) {
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        const int e0 = (k * nthreads + tid) * kC;
        if (e0 < L) {
          *reinterpret_cast<float4*>(smem + hadamard_slot(e0)) = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
          *reinterpret_cast<float4*>(smem + hadamard_slot(e0 + 4)) = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
        }
      }
      __syncthreads();
      for (int h = HadamardTile::kRegisterOnly; h < L; h *= 2) {
        for (int q = tid; q < L / 2; q += nthreads) {
          // Pair q: elements (j, j + h), h a power of two >= 256, so j + h's slot is j's + h.
          const int j = hadamard_slot(((q & ~(h - 1)) << 1) | (q & (h - 1)));
          const float a = smem[j], b = smem[j + h];
          smem[j] = a + b;
          smem[j + h] = a - b;
        }
        __syncthreads();
      }
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        const int e0 = (k * nthreads + tid) * kC;
        if (e0 < L) {
          const float4 lo = *reinterpret_cast<const float4*>(smem + hadamard_slot(e0));
          const float4 hi = *reinterpret_cast<const float4*>(smem + hadamard_slot(e0 + 4));
          v[k][0] = lo.x, v[k][1] = lo.y, v[k][2] = lo.z, v[k][3] = lo.w;
          v[k][4] = hi.x, v[k][5] = hi.y, v[k][6] = hi.z, v[k][7] = hi.w;
        }
      }
      __syncthreads();  // the next segment reuses smem
    }
    TO* dst = out + row * out_rs + base;
#pragma unroll
    for (int k = 0; k < kK; ++k) {
#pragma unroll
      for (int i = 0; i < kC; ++i) v[k][i] *= scale;
      store_chunk<kC>(dst, v[k], (k * nthreads + tid) * kC, out_len, vec_out);
    }
  }
}

// ws: (rows, a * b) fp32 after the segment pass; applies H_a over i for each (row, c < b):
// elements ws[row, i*b + c].
template <int kA, typename TO>
__global__ void __launch_bounds__(256)
    hadamard_columns_kernel(const float* ws, int64_t rows, int64_t b, TO* out, int64_t out_rs, int64_t n, float scale) {
  const int64_t total = rows * b;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / b, c = idx % b;
    const float* src = ws + row * kA * b + c;
    float v[kA];
#pragma unroll
    for (int i = 0; i < kA; ++i) v[i] = src[i * b];
#pragma unroll
    for (int h = 1; h < kA; h *= 2)
#pragma unroll
      for (int i = 0; i < kA; ++i)
        if ((i & h) == 0) {
          const float x0 = v[i], x1 = v[i + h];
          v[i] = x0 + x1;
          v[i + h] = x0 - x1;
        }
#pragma unroll
    for (int i = 0; i < kA; ++i)
      if (i * b + c < n) out[row * out_rs + i * b + c] = from_f<TO>(v[i] * scale);
  }
}

}  // namespace mmm
