// The fused Monarch forward for square Monarch matrices on sm_90 thread-block clusters (fp16/bf16):
// k = l = p = q = r = s = B (B = 32 or 64), so (monarch_fused.h)
//     u[t, b*B + i1] = sum_c x[t, b*B + c] * w1[b, i1, c]       (stage 1, rounded to T)
//     y[t, t2*B + j] = sum_i u[t, i*B + j] * w2[j, t2, i]        (stage 2)
// and stage-2 block j reads row i1 = j of every stage-1 block i.
//
// Why: the streaming kernel (monarch_fused_kernel.cuh) reads all of w1 and w2 from L2 for every
// 16-32 tokens, 2-4x the activation bytes at 4096 features. Here a cluster of kC = B / 8 CTAs
// holds them all in shared memory: CTA `rank` owns stage-1 blocks b = 8*rank + w and stage-2
// blocks j = 8*rank + w (w < 8, one per warp), loads them once, and the cluster walks over tiles
// of 16 tokens (persistent: cluster c takes tiles c, c + clusters, ...). HBM then sees x once and
// y once; the intermediate crosses between CTAs through distributed shared memory.
//
// One tile, every CTA of the cluster in step:
//   stage 1, warp w (block b): u^T (i1, t) = w1[b] (i1, c) * x (t, c)^T on tensor cores, w1 as the
//     A operand so that an accumulator pair holds two adjacent tokens of one row i1. Row i1 goes
//     to CTA i1 / 8 (an m16 tile's two 8-row halves: two CTAs), into its z buffer at (jj = i1 % 8,
//     i = b, t): one 32-bit remote store per pair (cluster_store_u32).
//   cluster barrier: every CTA's z now holds (jj, i, t) for its 8 blocks, all i, all 16 tokens.
//   stage 2, warp jj: y (t, t2) = z_jj (t, i) * w2[8*rank + jj] (t2, i)^T, A by ldmatrix .trans
//     from z (stored [i][t]); the warp then writes its 16 x B outputs over its own z region.
//   __syncthreads, then 16-byte stores: y[t, t2*B + 8*rank .. +8] are the 8 warps' outputs.
// z is double-buffered (tile n in buffer n % 2): CTA a writes CTA b's buffer for tile n + 2 only
// after the barrier of tile n + 1, which b reaches after it finished reading tile n. So one cluster
// barrier per tile orders everything. x streams through kMonarchClusterXStages cp.async buffers,
// two tiles ahead.
//
// Shared-memory layouts (all free of bank conflicts):
//   w1s, w2s  [8 blocks][B rows][B + 8]    ldmatrix rows 16 mod 128 bytes apart
//   xs        [3][16 tokens][8B + 8]       the same for stage 1's B operand
//   zs        [2][8 jj][B*16]: element (i, t) of region jj at zt_slot: 16-byte chunk 2i + t/8,
//             XOR (i/4 % 2) ^ jj. A remote store's 8 lanes of one t-chunk (jj = 0..7, same i) then
//             land in 8 bank groups, and so do the 8 rows i of an ldmatrix (2i + t/8 alone would
//             give 4); stage 2's output (t, t2) at y_slot: chunk t2/8 XOR (t / (8/cpr)) % cpr,
//             cpr = B/8 chunks a row, so the 8 rows of an accumulator store differ in bank group.
#pragma once
#include "block_diag_matmul/monarch_fused.h"
#include "core/cluster.cuh"
#include "core/cp_async.cuh"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

namespace mmm {

template <int kB>
struct MonarchClusterTile {
  static_assert(kB == 32 || kB == 64, "blocks of 32 or 64");
  static constexpr int kWarps = kMonarchClusterWarps, kThreads = 32 * kWarps;
  static constexpr int kC = kB / kWarps;  // CTAs per cluster
  static constexpr int kT = kMonarchClusterTokens, kS = kMonarchClusterXStages;
  static constexpr int kWP = kB + 8, kXP = kWarps * kB + 8;  // row pitches (elements)
  static constexpr int kRegion = kB * kT;                    // one warp's z region (elements)
  static constexpr int kMT = kB / 16;  // 16-row tiles of a block: stage 1's m tiles, stage 2's n16 tiles
  static_assert(kWarps == 8 && kT == 16, "8 blocks a CTA (an 8-row half tile is one CTA's), 2 chunks of 8 tokens");
};

// Element (i, t) of a z region (jj): see the header comment.
template <int kB>
__device__ __forceinline__ int monarch_zt_slot(int jj, int i, int t) {
  const int chunk = (2 * i + t / 8) ^ (((i >> 2) & 1) ^ jj);
  return chunk * 8 + t % 8;
}
// Stage-2 output (t, t2) in a z region (row t, B per row, chunks permuted).
template <int kB>
__device__ __forceinline__ int monarch_y_slot(int t, int t2) {
  constexpr int cpr = kB / 8, rows_per_line = 8 / cpr;
  return t * kB + (((t2 / 8) ^ ((t / rows_per_line) % cpr)) * 8) + t2 % 8;
}

template <typename T, int kB>
__global__ void __launch_bounds__(kMonarchClusterWarps * 32, 1) monarch_cluster_kernel(const MonarchFused f) {
  using Tile = MonarchClusterTile<kB>;
  constexpr int kWarps = Tile::kWarps, kThreads = Tile::kThreads, kC = Tile::kC, kT = Tile::kT, kS = Tile::kS;
  constexpr int kWP = Tile::kWP, kXP = Tile::kXP, kRegion = Tile::kRegion, kMT = Tile::kMT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w1s = reinterpret_cast<T*>(smem_raw);  // [8][kB][kWP]: this CTA's w1 blocks, rows i1
  T* w2s = w1s + kWarps * kB * kWP;         // [8][kB][kWP]: its w2 blocks, rows t2
  T* xs = w2s + kWarps * kB * kWP;          // [kS][kT][kXP]: x tiles, its 8 blocks' columns
  T* zs = xs + kS * kT * kXP;               // [2][8][kRegion]

  const T* X = static_cast<const T*>(f.x);
  T* Y = static_cast<T*>(f.y);
  const unsigned rank = cluster_ctarank();
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, gq = lane / 4, tq = lane % 4;
  const int64_t clusters = gridDim.x / kC, cluster = blockIdx.x / kC;
  const int64_t tiles = (f.tokens + kT - 1) / kT;
  const int64_t my_tiles = cluster < tiles ? (tiles - cluster + clusters - 1) / clusters : 0;  // cluster-uniform
  const int64_t col0 = int64_t(rank) * kWarps * kB;  // this CTA's x columns; its w1 / w2 blocks start at 8*rank
  const auto tile_token = [&](int64_t n) { return (cluster + n * clusters) * kT; };

  {  // the weights, once
    const T* W1 = static_cast<const T*>(f.w1) + col0 * kB;
    const T* W2 = static_cast<const T*>(f.w2) + col0 * kB;
    constexpr int cpr = kB / 8, rows = kWarps * kB;
    for (int i = tid; i < rows * cpr; i += kThreads) {
      int row, ch;
      padded_tile_chunk(i, cpr, rows, row, ch);
      cp_async_16(w1s + row * kWP + ch * 8, W1 + row * kB + ch * 8, true);
      cp_async_16(w2s + row * kWP + ch * 8, W2 + row * kB + ch * 8, true);
    }
    cp_async_commit();
  }
  const auto load_x = [&](int64_t n, int buf) {
    const int64_t tok0 = tile_token(n);
    constexpr int cpr = kWarps * kB / 8;
    for (int i = tid; i < kT * cpr; i += kThreads) {
      const int m = i / cpr, ch = i % cpr;
      const bool ok = tok0 + m < f.tokens;
      // Rows past the end: zero-filled, the source clamped to tok0's row.
      cp_async_16(xs + (buf * kT + m) * kXP + ch * 8, X + (ok ? tok0 + m : tok0) * f.x_rs + col0 + ch * 8, ok);
    }
  };
#pragma unroll
  for (int st = 0; st < kS - 1; ++st) {
    if (st < my_tiles) load_x(st, st);
    cp_async_commit();  // possibly empty: every thread commits the same groups
  }
  cluster_sync();  // every CTA of the cluster runs before anyone stores into its shared memory

#pragma unroll 1
  for (int64_t n = 0; n < my_tiles; ++n) {
    cp_async_wait<kS - 2>();  // tile n's x (and, the first time, the weights) landed, this thread
    __syncthreads();          // everyone's; buffer (n - 1) % kS is free (stage 1 of tile n - 1 done)
    if (n + kS - 1 < my_tiles) load_x(n + kS - 1, int((n + kS - 1) % kS));
    cp_async_commit();
    T* z = zs + (n % 2) * kWarps * kRegion;

    {  // stage 1: warp = stage-1 block b = 8*rank + warp
      float acc[kMT][2][4] = {};
      const T* a_tile = w1s + warp * kB * kWP;
      const T* b_tile = xs + int(n % kS) * kT * kXP + warp * kB;
#pragma unroll
      for (int kk = 0; kk < kB; kk += 16) {
        uint32_t b_lo[2], b_hi[2];
        load_b_frags(b_lo, b_hi, b_tile, kXP, 0, kk);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          uint32_t a[4];
          load_a_frag(a, a_tile, kWP, mt * 16, kk);
          mma_m16n8k16<T>(acc[mt][0], a, b_lo);
          mma_m16n8k16<T>(acc[mt][1], a, b_hi);
        }
      }
      // acc[mt][nt][2h + e]: row i1 = 16 mt + 8 h + gq, token 8 nt + 2 tq + e; to CTA 2 mt + h.
      const int i = int(rank) * kWarps + warp;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            cluster_store_u32(z + gq * kRegion + monarch_zt_slot<kB>(gq, i, 8 * nt + 2 * tq), unsigned(2 * mt + h),
                              pack2<T>(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]));
    }
    cluster_sync();  // every CTA's stage 1 of this tile is in every CTA's z

    {  // stage 2: warp = stage-2 block j = 8*rank + jj, jj = warp
      T* region = z + warp * kRegion;
      const T* b_tile = w2s + warp * kB * kWP;
      float acc[kMT][2][4] = {};
#pragma unroll
      for (int kk = 0; kk < kB; kk += 16) {
        // A(t, i) = z[i][t]: ldmatrix .trans of matrix j at rows i = kk + 8*(j/2) + lane%8, tokens
        // 8*(j%2) (core/mma.cuh's A register order: j%2 rows 8-15, j/2 k 8-15).
        uint32_t a[4];
        const int j = lane / 8;
        ldmatrix_x4_trans(a, region + monarch_zt_slot<kB>(warp, kk + 8 * (j / 2) + lane % 8, 8 * (j % 2)));
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt) {
          uint32_t b_lo[2], b_hi[2];
          load_b_frags(b_lo, b_hi, b_tile, kWP, nt * 16, kk);
          mma_m16n8k16<T>(acc[nt][0], a, b_lo);
          mma_m16n8k16<T>(acc[nt][1], a, b_hi);
        }
      }
      __syncwarp();  // every lane's ldmatrix of the region is done before the region is overwritten
      // acc[nt][h][2e + c]: token gq + 8 e, output t2 = 16 nt + 8 h + 2 tq + c.
#pragma unroll
      for (int nt = 0; nt < kMT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            *reinterpret_cast<uint32_t*>(region + monarch_y_slot<kB>(gq + 8 * e, 16 * nt + 8 * h + 2 * tq)) =
                pack2<T>(acc[nt][h][2 * e], acc[nt][h][2 * e + 1]);
    }
    __syncthreads();  // all 8 warps' outputs staged

    const int64_t tok0 = tile_token(n);
    for (int i = tid; i < kT * kB; i += kThreads) {
      const int m = i / kB, t2 = i % kB;
      if (tok0 + m < f.tokens) {
        const int slot = monarch_y_slot<kB>(m, t2);
        uint32_t w[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {  // y columns t2*B + 8*rank + jj, jj = 2q, 2q + 1
          const uint16_t lo = *reinterpret_cast<const uint16_t*>(z + (2 * q) * kRegion + slot);
          const uint16_t hi = *reinterpret_cast<const uint16_t*>(z + (2 * q + 1) * kRegion + slot);
          w[q] = uint32_t(lo) | (uint32_t(hi) << 16);
        }
        T* dst = Y + (tok0 + m) * f.y_rs + int64_t(t2) * kB + col0 / kB;
        // known uncoalesced: a CTA owns 8 of a row's B columns per t2 (16 bytes of a 32-byte
        // sector); the cluster's next CTA writes the sector's other half, and L2 merges them.
        *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
      }
    }
  }
}

}  // namespace mmm
