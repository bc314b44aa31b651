// Block GEMM on CUDA: C[b][i][j] = sum_p A[b][i][p] * B[b][p][j] with arbitrary strides.
//
//   block_gemm_mma_kernel   fp16/bf16: 128x64 C tiles, 4 warps of 64x32, tiles staged through
//                           shared memory 32 deep, ldmatrix + mma.sync m16n8k16, fp32 accumulators.
//   block_gemm_kernel       fp32 (and MMM_DISABLE_TENSOR_CORES=1): 64x64 tiles, a 4x4 sub-tile
//                           per thread, FMA in fp32.
// Both stage any strides: tile loads walk whichever tile dimension has unit stride, so the
// permuted Monarch views still load coalesced; shared memory always holds [m][k] and [n][k].
// Each C element is one CTA's dot product in a fixed order: deterministic, dweight included.
// Not yet: cp.async multi-stage pipelining and 128-bit loads for the unit-stride cases.
#pragma once
#include "block_diag_matmul/params.h"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

namespace mmm {

struct BlockGemmTile {
  static constexpr int kM = 64, kN = 64, kK = 16, kThreads = 256;
  static constexpr int kPerThread = 4;  // (4, 4) outputs per thread
  static_assert(kM / kPerThread * (kN / kPerThread) == kThreads, "one 4x4 sub-tile per thread");
};

template <typename T>
__global__ void __launch_bounds__(BlockGemmTile::kThreads) block_gemm_kernel(const BlockGemm g) {
  using Tile = BlockGemmTile;
  constexpr int kM = Tile::kM, kN = Tile::kN, kK = Tile::kK, kR = Tile::kPerThread;
  __shared__ float a_tile[kK][kM + 4];  // (kK, kM), k-major: a thread's 4 rows are adjacent
  __shared__ float b_tile[kK][kN + 4];  // (kK, kN)
  const int tid = threadIdx.x, tx = tid % (kN / kR), ty = tid / (kN / kR);
  const bool a_k_unit = g.a_ks == 1, b_k_unit = g.b_ks == 1;
  const int64_t j0 = int64_t(blockIdx.x) * kN;

  for (int64_t blk = blockIdx.z; blk < g.batch; blk += gridDim.z) {
    const T* A = static_cast<const T*>(g.a) + blk * g.a_bs;
    const T* B = static_cast<const T*>(g.b) + blk * g.b_bs;
    T* C = static_cast<T*>(g.c) + blk * g.c_bs;
    for (int64_t i0 = int64_t(blockIdx.y) * kM; i0 < g.m; i0 += int64_t(gridDim.y) * kM) {
      float acc[kR][kR] = {};
      for (int64_t p0 = 0; p0 < g.k; p0 += kK) {
        for (int e = tid; e < kM * kK; e += Tile::kThreads) {
          const int mm = a_k_unit ? e / kK : e % kM, kk = a_k_unit ? e % kK : e / kM;
          const int64_t i = i0 + mm, p = p0 + kk;
          a_tile[kk][mm] = i < g.m && p < g.k ? to_f(A[i * g.a_ms + p * g.a_ks]) : 0.f;
        }
        for (int e = tid; e < kK * kN; e += Tile::kThreads) {
          const int nn = b_k_unit ? e / kK : e % kN, kk = b_k_unit ? e % kK : e / kN;
          const int64_t p = p0 + kk, j = j0 + nn;
          b_tile[kk][nn] = p < g.k && j < g.n ? to_f(B[p * g.b_ks + j * g.b_ns]) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kK; ++kk) {
          float a[kR], b[kR];
#pragma unroll
          for (int r = 0; r < kR; ++r) {
            a[r] = a_tile[kk][ty * kR + r];
            b[r] = b_tile[kk][tx * kR + r];
          }
#pragma unroll
          for (int r = 0; r < kR; ++r)
#pragma unroll
            for (int c = 0; c < kR; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        __syncthreads();  // the tiles are overwritten next
      }
#pragma unroll
      for (int r = 0; r < kR; ++r)
#pragma unroll
        for (int c = 0; c < kR; ++c) {
          const int64_t i = i0 + ty * kR + r, j = j0 + tx * kR + c;
          if (i < g.m && j < g.n) C[i * g.c_ms + j * g.c_ns] = from_f<T>(acc[r][c]);
        }
    }
  }
}

struct BlockGemmMmaTile {
  static constexpr int kM = 128, kN = 64, kK = 32, kThreads = 128;
  static constexpr int kWarpsN = 2, kWarpM = 64, kWarpN = 32;  // 2x2 warps
  static constexpr int kMi = kWarpM / 16, kNj = kWarpN / 8;   // m16 and n8 tiles per warp
  // Rows of 40 elements (80 bytes): 16-byte aligned for ldmatrix, and 8 consecutive rows hit 8
  // distinct 16-byte bank groups, so ldmatrix is conflict-free.
  static constexpr int kPitch = kK + 8;
  static_assert(kM == 2 * kWarpM && kN == kWarpsN * kWarpN && kK % 16 == 0 && kNj % 2 == 0);
};

template <typename T>
__global__ void __launch_bounds__(BlockGemmMmaTile::kThreads) block_gemm_mma_kernel(const BlockGemm g) {
  using Tile = BlockGemmMmaTile;
  constexpr int kM = Tile::kM, kN = Tile::kN, kK = Tile::kK, kP = Tile::kPitch;
  __shared__ __align__(16) T a_tile[kM * kP];  // (kM, kK): A, k contiguous
  __shared__ __align__(16) T b_tile[kN * kP];  // (kN, kK): B transposed, k contiguous
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp / Tile::kWarpsN) * Tile::kWarpM, wn = (warp % Tile::kWarpsN) * Tile::kWarpN;
  const bool a_k_unit = g.a_ks == 1, b_k_unit = g.b_ks == 1;
  const int64_t j0 = int64_t(blockIdx.x) * kN;
  const T zero = from_f<T>(0.f);

  for (int64_t blk = blockIdx.z; blk < g.batch; blk += gridDim.z) {
    const T* A = static_cast<const T*>(g.a) + blk * g.a_bs;
    const T* B = static_cast<const T*>(g.b) + blk * g.b_bs;
    T* C = static_cast<T*>(g.c) + blk * g.c_bs;
    for (int64_t i0 = int64_t(blockIdx.y) * kM; i0 < g.m; i0 += int64_t(gridDim.y) * kM) {
      float acc[Tile::kMi][Tile::kNj][4] = {};
      for (int64_t p0 = 0; p0 < g.k; p0 += kK) {
        for (int e = tid; e < kM * kK; e += Tile::kThreads) {
          const int mm = a_k_unit ? e / kK : e % kM, kk = a_k_unit ? e % kK : e / kM;
          const int64_t i = i0 + mm, p = p0 + kk;
          a_tile[mm * kP + kk] = i < g.m && p < g.k ? A[i * g.a_ms + p * g.a_ks] : zero;
        }
        for (int e = tid; e < kN * kK; e += Tile::kThreads) {
          const int nn = b_k_unit ? e / kK : e % kN, kk = b_k_unit ? e % kK : e / kN;
          const int64_t p = p0 + kk, j = j0 + nn;
          b_tile[nn * kP + kk] = p < g.k && j < g.n ? B[p * g.b_ks + j * g.b_ns] : zero;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kK; kk += 16) {
          uint32_t a[Tile::kMi][4];
#pragma unroll
          for (int mi = 0; mi < Tile::kMi; ++mi) load_a_frag(a[mi], a_tile, kP, wm + mi * 16, kk);
#pragma unroll
          for (int nj = 0; nj < Tile::kNj; nj += 2) {
            uint32_t b_lo[2], b_hi[2];
            load_b_frags(b_lo, b_hi, b_tile, kP, wn + nj * 8, kk);
#pragma unroll
            for (int mi = 0; mi < Tile::kMi; ++mi) {
              mma_m16n8k16<T>(acc[mi][nj], a[mi], b_lo);
              mma_m16n8k16<T>(acc[mi][nj + 1], a[mi], b_hi);
            }
          }
        }
        __syncthreads();  // the tiles are overwritten next
      }
      // c[i] of an m16n8 tile sits at (row g + 8*(i/2), col 2t + i%2).
      const int gq = lane / 4, tq = lane % 4;
#pragma unroll
      for (int mi = 0; mi < Tile::kMi; ++mi)
#pragma unroll
        for (int nj = 0; nj < Tile::kNj; ++nj)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int64_t i = i0 + wm + mi * 16 + gq + 8 * (c / 2), j = j0 + wn + nj * 8 + 2 * tq + c % 2;
            if (i < g.m && j < g.n) C[i * g.c_ms + j * g.c_ns] = from_f<T>(acc[mi][nj][c]);
          }
    }
  }
}

}  // namespace mmm
