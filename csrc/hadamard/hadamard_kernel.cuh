// Fast Walsh-Hadamard transform kernels (fp32 arithmetic whatever the storage type).
//
//   hadamard_segment_kernel  one CTA transforms one power-of-two segment of a row (the whole
//                            row when it fits): each thread holds 32 elements (4 chunks of 8
//                            consecutive ones) in registers; strides 1-4 are butterflies in
//                            registers, strides 8-128 warp shuffles, the strides between warps
//                            one shared-memory transpose and back (the only shared-memory
//                            traffic: two round trips whatever the length), and the strides
//                            between a thread's chunks registers again.
//   hadamard_columns_kernel  rows longer than one CTA's shared memory: H_m = H_a (x) H_b, so after
//                            the segment kernel has applied H_b to each of the a segments, a
//                            thread per (row, column) applies H_a across them in registers.
//   kPair (sm_90)            a row whose segment would fill an SM alone (32768 elements: 128 KB
//                            and 1024 threads) on a cluster of two CTAs, each the segment kernel
//                            on one half, then the top stride (H_2) between the halves through
//                            distributed shared memory: two rows' CTAs share an SM.
#pragma once
#include "core/cluster.cuh"
#include "core/cuda_utils.cuh"

namespace mmm {

struct HadamardTile {
  static constexpr int kChunk = 8;                      // consecutive elements: 16 or 32 bytes
  static constexpr int kChunks = 4;                     // chunks per thread
  static constexpr int kPerThread = kChunk * kChunks;   // 32 elements in registers
  static constexpr int kMaxThreads = 1024;
  static constexpr int64_t kMaxSegment = int64_t(kPerThread) * kMaxThreads;  // 32768
  static constexpr int kRegisterOnly = kPerThread * 32;  // one warp, no shared memory: 1024
  // blockDim.x for a segment (the launcher's choice, which the kernel's bit layout assumes).
  static constexpr int threads(int64_t seg_len) {
    return int(seg_len / kPerThread < 32 ? 32 : seg_len / kPerThread > kMaxThreads ? kMaxThreads : seg_len / kPerThread);
  }
};

// in: a row's elements >= in_n read as zero (the implicit padding); out: only elements < out_n
// are written. seg_len is a power of two <= kMaxSegment; blockDim.x = HadamardTile::threads.
// vec_in / vec_out: every row of in / out starts 16-byte aligned (rows_aligned, from the launcher),
// so chunks move as 16-byte loads / stores; element by element otherwise and at a row's ragged end.
//
// Element e of the segment, e = (k * nthreads + tid) * 8 + i, has its bits in
//   0-2: i (registers)   3-7: lane (shuffles)   8 .. 7+W: warp, W = log2(nthreads / 32)
//   (shared memory)   8+W, 9+W: chunk k (registers)
// and the stages run in that order, which is the order of increasing stride, so every
// output is bit-identical to the CPU twin's. Above kRegisterOnly, nthreads = seg_len / 32 and
// all of this is exact; below, one warp holds fewer valid chunks (k * 256 < seg_len).
// Inside a segment every index is a 32-bit int: 1024 threads leave 64 registers per thread, 32
// of them the data.
//
// Shared memory (seg_len > kRegisterOnly): the natural layout goes in as two 16-byte accesses
// per chunk; element e lives at slot e ^ (bit 5 of e) << 2 (hadamard_slot): a chunk's halves
// swap places in every second group of four chunks, so the 8 lanes of each quarter warp hit 8
// distinct 16-byte bank groups (in natural order lanes 4 apart collide: 2-way). The transposed
// layout reads one element per lane and register, lanes on element bits 0-4 (bit 5 is the same
// across a warp there, so the 32 lanes hit 32 banks).
__device__ __forceinline__ int hadamard_slot(int e) { return e ^ ((e >> 3) & 4); }

// The W strides between warps, on the whole segment in smem (natural layout, hadamard_slot),
// through the transposed layout (hadamard_segment_kernel). W is a template parameter so that
// the 32 slots of a thread are one base plus constants: computed at run time they would take 32
// more registers (the kernel has 64).
template <int W>
__device__ __forceinline__ void hadamard_warp_strides(float* smem, int warp, int lane) {
  constexpr int kP = HadamardTile::kPerThread, kJl = (1 << W) - 1;
  // The element's bits split into the thread's and j's (disjoint), and neither j part touches
  // bit 2 or bit 5 (which is warp bit 0), so slot = hadamard_slot(thread part) + j part.
  const int base = hadamard_slot(lane | ((warp & 7) << 5) | ((warp >> 3) << (8 + W)));
  const auto jpart = [](int j) { return ((j & ~kJl & 7) << 5) | ((j & kJl) << 8) | (((j & ~kJl) >> 3) << (8 + W)); };
  float t[kP];
#pragma unroll
  for (int j = 0; j < kP; ++j) t[j] = smem[base + jpart(j)];
#pragma unroll
  for (int h = 1; h <= kJl; h *= 2)
#pragma unroll
    for (int j = 0; j < kP; ++j)
      if ((j & h) == 0) {
        const float a = t[j], b = t[j + h];
        t[j] = a + b;
        t[j + h] = a - b;
      }
#pragma unroll
  for (int j = 0; j < kP; ++j) smem[base + jpart(j)] = t[j];
}

// kPair: segs_per_row = 2 on clusters of two CTAs (rank = the segment's half of the row, as
// gridDim.x is even); the halves' transforms meet in shared memory for the top stride, each CTA
// producing both outputs (a0 + a1, a0 - a1) of its half of the positions, in the order the CPU
// twin adds them (so still bit-identical). 512 threads of at most 64 registers: two CTAs an SM.
template <typename TI, typename TO, bool kPair = false>
__global__ void __launch_bounds__(kPair ? HadamardTile::kMaxThreads / 2 : HadamardTile::kMaxThreads, kPair ? 2 : 1)
    hadamard_segment_kernel(const TI* in, int64_t in_rs, int64_t in_n, TO* out, int64_t out_rs, int64_t out_n,
                            int64_t rows, int64_t seg_len, int64_t segs_per_row, float scale, bool vec_in,
                            bool vec_out) {
  constexpr int kC = HadamardTile::kChunk, kK = HadamardTile::kChunks;
  extern __shared__ __align__(16) float smem[];  // (seg_len,) when seg_len > kRegisterOnly
  const int nthreads = blockDim.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int L = int(seg_len);
  int log_warps = 0;  // W
  while ((32 << log_warps) < nthreads) ++log_warps;
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
    // Strides 8 .. 128: chunk c's partner c ^ bit lives in lane ^ bit. Every lane shuffles;
    // lanes past the segment hold zeros nobody valid reads.
#pragma unroll
    for (int bit = 1; bit < 32; bit *= 2) {
      if (kC * bit >= L) break;
      // other - v in the upper lane, v + other in the lower: one exact product and one rounding
      // either way, and no select (whose second temporary per value made fp32 spill on sm_80).
      const float sign = (lane & bit) ? -1.f : 1.f;
#pragma unroll
      for (int k = 0; k < kK; ++k)
#pragma unroll
        for (int i = 0; i < kC; ++i) v[k][i] = fmaf(sign, v[k][i], __shfl_xor_sync(0xffffffffu, v[k][i], bit));
    }
    // Strides 256 .. 128 << W: between warps, through shared memory (L = 32 * nthreads here, so
    // every chunk is valid). Transposed, thread (warp, lane) holds in t[j], j = jl | jh << W,
    // the element  lane | (o & 7) << 5 | jl << 8 | (o >> 3) << (8 + W),  o = warp | jh << W:
    // its 2^W values jl differ in exactly the warp bits.
    if (L > HadamardTile::kRegisterOnly) {
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        const int e0 = (k * nthreads + tid) * kC;
        *reinterpret_cast<float4*>(smem + hadamard_slot(e0)) = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
        *reinterpret_cast<float4*>(smem + hadamard_slot(e0 + 4)) = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
      }
      __syncthreads();
      switch (log_warps) {
        case 1: hadamard_warp_strides<1>(smem, warp, lane); break;
        case 2: hadamard_warp_strides<2>(smem, warp, lane); break;
        case 3: hadamard_warp_strides<3>(smem, warp, lane); break;
        case 4: hadamard_warp_strides<4>(smem, warp, lane); break;
        default: hadamard_warp_strides<5>(smem, warp, lane); break;
      }
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        const int e0 = (k * nthreads + tid) * kC;
        const float4 lo = *reinterpret_cast<const float4*>(smem + hadamard_slot(e0));
        const float4 hi = *reinterpret_cast<const float4*>(smem + hadamard_slot(e0 + 4));
        v[k][0] = lo.x, v[k][1] = lo.y, v[k][2] = lo.z, v[k][3] = lo.w;
        v[k][4] = hi.x, v[k][5] = hi.y, v[k][6] = hi.z, v[k][7] = hi.w;
      }
      __syncthreads();  // the next segment reuses smem
    }
    // The two top strides, 8 * nthreads and 16 * nthreads: between a thread's chunks.
#pragma unroll
    for (int kb = 1; kb < kK; kb *= 2) {
      if (kb * nthreads * kC >= L) break;
#pragma unroll
      for (int k = 0; k < kK; ++k)
        if ((k & kb) == 0)
#pragma unroll
          for (int i = 0; i < kC; ++i) {
            const float a = v[k][i], b = v[k + kb][i];
            v[k][i] = a + b;
            v[k + kb][i] = a - b;
          }
    }
    if constexpr (kPair) {
      // The halves' top stride: both transforms in shared memory (natural layout), then CTA
      // `half` takes its threads' chunks 2 half and 2 half + 1, positions [half, half + 1) * L / 2
      // of both halves.
#pragma unroll
      for (int k = 0; k < kK; ++k) {
        const int e0 = (k * nthreads + tid) * kC;
        *reinterpret_cast<float4*>(smem + hadamard_slot(e0)) = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
        *reinterpret_cast<float4*>(smem + hadamard_slot(e0 + 4)) = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
      }
      cluster_sync();
      const unsigned half = unsigned(seg % 2);
      TO* dst = out + row * out_rs;
      const int lo_len = int(out_n < seg_len ? out_n : seg_len), hi_len = int(out_n - seg_len < 0 ? 0 : out_n - seg_len);
#pragma unroll
      for (int k = 2 * int(half); k < 2 * int(half) + 2; ++k) {
        const int e0 = (k * nthreads + tid) * kC;
        float a[2][kC];  // [half of the row][element of the chunk]
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int slot = hadamard_slot(e0 + 4 * q);
          const float4 own = *reinterpret_cast<const float4*>(smem + slot), other = cluster_load_f4(smem + slot, half ^ 1u);
          const float4 first = half ? other : own, second = half ? own : other;
          a[0][4 * q] = first.x, a[0][4 * q + 1] = first.y, a[0][4 * q + 2] = first.z, a[0][4 * q + 3] = first.w;
          a[1][4 * q] = second.x, a[1][4 * q + 1] = second.y, a[1][4 * q + 2] = second.z, a[1][4 * q + 3] = second.w;
        }
        float lo[kC], hi[kC];
#pragma unroll
        for (int i = 0; i < kC; ++i) {
          lo[i] = (a[0][i] + a[1][i]) * scale;
          hi[i] = (a[0][i] - a[1][i]) * scale;
        }
        store_chunk<kC>(dst, lo, e0, lo_len, vec_out);
        store_chunk<kC>(dst + seg_len, hi, e0, hi_len, vec_out);
      }
      cluster_sync();  // the other CTA's reads of this one's shared memory are done before the next row
    } else {
      TO* dst = out + row * out_rs + base;
#pragma unroll
      for (int k = 0; k < kK; ++k) {
#pragma unroll
        for (int i = 0; i < kC; ++i) v[k][i] *= scale;
        store_chunk<kC>(dst, v[k], (k * nthreads + tid) * kC, out_len, vec_out);
      }
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
