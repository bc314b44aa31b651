// Block GEMM on CUDA: C[b][i][j] = sum_p A[b][i][p] * B[b][p][j] with arbitrary strides.
//
// The correctness-first path every shape and stride takes: 64x64 C tiles per CTA of 256 threads,
// each thread owning a 4x4 sub-tile, the K dimension staged through shared memory 16 at a time
// in fp32, FMA accumulation in fp32. Tile loads walk whichever of the two tile dimensions has
// unit stride, so the permuted Monarch views still load coalesced.
// Each C element is one CTA's dot product in a fixed order: deterministic, dweight included.
// (The tensor-core mma.sync path for 16-multiple blocks is not written yet; see the README.)
#pragma once
#include "block_diag_matmul/params.h"
#include "core/cuda_utils.cuh"

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

}  // namespace mmm
