// The fused Monarch forward for square Monarch matrices on sm_90 thread-block clusters (fp16/bf16):
// k = l = p = q = r = s = B (B = 32 or 64), so (monarch_fused.h)
//     u[t, b*B + i1] = sum_c x[t, b*B + c] * w1[b, i1, c]       (stage 1, rounded to T)
//     y[t, t2*B + j] = sum_i u[t, i*B + j] * w2[j, t2, i]        (stage 2)
// and stage-2 block j reads row i1 = j of every stage-1 block i.
//
// Why: the streaming kernel (monarch_fused_kernel.cuh) reads all of w1 and w2 from L2 for every
// 16-32 tokens, 2-4x the activation bytes at 4096 features. Here a cluster of kC = B / 8 CTAs
// holds them all on chip: CTA `rank` owns stage-1 blocks b = 8*rank + w and stage-2 blocks
// j = 8*rank + w, warp w one of each, kept in registers as mma fragments (64 + 64 registers a
// lane at B = 64: loaded once, so shared memory serves only x and the exchange, and each mma
// costs an eighth of an ldmatrix instead of five eighths). The cluster walks over tiles of 16
// tokens (persistent: cluster c takes tiles c, c + clusters, ...). HBM then sees x once and y
// once; the intermediate crosses between CTAs through distributed shared memory.
//
// One tile n, every CTA of the cluster in step:
//   stage 1, warp w (block b): u^T (i1, t) = w1[b] (i1, c) * x (t, c)^T on tensor cores, w1 as the
//     A operand so that an accumulator pair holds two adjacent tokens of one row i1. Row i1 goes
//     to CTA i1 / 8 (an m16 tile's two 8-row halves: two CTAs), into its exchange buffer z[n % 3]
//     at (jj = i1 % 8, i = b, t): one 32-bit remote store per pair (cluster_store_u32).
//   cluster barrier, split: arrive; the previous tile's y leaves (below) while the other CTAs
//     catch up; wait. Every CTA's z[n % 3] now holds (jj, i, t) for its 8 blocks, all i, 16 tokens.
//   stage 2, warp jj: y (t, t2) = z_jj (t, i) * w2[8*rank + jj] (t2, i)^T, A by ldmatrix .trans
//     from z (stored [i][t]); the warp then writes its 16 x B outputs over its own z region.
//   next iteration, after its __syncthreads and its own arrive: 16-byte stores of y[t, t2*B +
//     8*rank .. +8], the 8 warps' outputs of tile n.
// Three exchange buffers: CTA a writes CTA b's z[n % 3] for tile n + 3 after waiting for the
// barrier of tile n + 2, which b arrives at after its stage 2 and its y stores of tile n (both
// before its arrive of tile n + 2). Two would not do: b stores tile n's y after arriving at n + 1.
// x streams through kMonarchClusterXStages cp.async buffers, kMonarchClusterXStages - 1 tiles
// ahead.
//
// Shared-memory layouts (all free of bank conflicts):
//   xs        [kS][16 tokens][8B + 8]      pitch 16 mod 128 bytes: conflict-free ldmatrix
//   zs        [3][8 jj][B*16]: element (i, t) of region jj at monarch_zt_slot: 16-byte chunk
//             2i + t/8, XOR (i/4 % 2) ^ jj. A remote store's 8 lanes of one t-chunk (jj = 0..7,
//             same i) then land in 8 bank groups, and so do the 8 rows i of an ldmatrix (2i + t/8
//             alone would give 4); stage 2's output (t, t2) at monarch_y_slot: chunk t2/8 XOR
//             (t / (8/cpr)) % cpr, cpr = B/8 chunks a row, so the 8 rows of an accumulator store
//             differ in bank group.
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
  static constexpr int kT = kMonarchClusterTokens, kS = kMonarchClusterXStages, kZ = kMonarchClusterZBuffers;
  static constexpr int kXP = kWarps * kB + 8;  // x row pitch (elements)
  static constexpr int kRegion = kB * kT;      // one warp's z region (elements)
  static constexpr int kMT = kB / 16;  // 16-row tiles of a block: stage 1's m tiles, stage 2's n16 tiles, k steps
  static_assert(kWarps == 8 && kT == 16, "8 blocks a CTA (an 8-row half tile is one CTA's), 2 chunks of 8 tokens");
};

// Element (i, t) of z region jj: see the header comment.
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
  constexpr int kZ = Tile::kZ, kXP = Tile::kXP, kRegion = Tile::kRegion, kMT = Tile::kMT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);  // [kS][kT][kXP]: x tiles, this CTA's 8 blocks' columns
  T* zs = xs + kS * kT * kXP;              // [kZ][8][kRegion]

  const T* X = static_cast<const T*>(f.x);
  T* Y = static_cast<T*>(f.y);
  const unsigned rank = cluster_ctarank();
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, gq = lane / 4, tq = lane % 4;
  const int64_t clusters = gridDim.x / kC, cluster = blockIdx.x / kC;
  const int64_t tiles = (f.tokens + kT - 1) / kT;
  const int64_t my_tiles = cluster < tiles ? (tiles - cluster + clusters - 1) / clusters : 0;  // cluster-uniform
  const int64_t col0 = int64_t(rank) * kWarps * kB;  // this CTA's x columns; its blocks start at 8*rank
  const auto tile_token = [&](int64_t n) { return (cluster + n * clusters) * kT; };

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

  // This warp's weights as mma fragments (core/mma.cuh's layouts), from global memory once:
  // w1 block 8*rank + warp as A (rows i1, columns c), w2 block 8*rank + warp as B ([t2][i]).
  uint32_t w1f[kMT][kMT][4], w2f[kMT][kMT][4];  // [m tile / n16 tile][k step][register]
  {
    const T* W1 = static_cast<const T*>(f.w1) + (col0 + warp * kB) * kB;
    const T* W2 = static_cast<const T*>(f.w2) + (col0 + warp * kB) * kB;
    const auto word = [](const T* p) { return *reinterpret_cast<const uint32_t*>(p); };  // known uncoalesced: once per CTA
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int ks = 0; ks < kMT; ++ks) {
        const int r0 = 16 * mt + gq, c0 = 16 * ks + 2 * tq;
        w1f[mt][ks][0] = word(W1 + r0 * kB + c0);            // (g, 2t)
        w1f[mt][ks][1] = word(W1 + (r0 + 8) * kB + c0);      // (g + 8, 2t)
        w1f[mt][ks][2] = word(W1 + r0 * kB + c0 + 8);        // (g, 2t + 8)
        w1f[mt][ks][3] = word(W1 + (r0 + 8) * kB + c0 + 8);  // (g + 8, 2t + 8)
        w2f[mt][ks][0] = word(W2 + r0 * kB + c0);            // n8 tile 16 mt: b0 (k 2t, n g)
        w2f[mt][ks][1] = word(W2 + r0 * kB + c0 + 8);        //                b1 (k 2t + 8)
        w2f[mt][ks][2] = word(W2 + (r0 + 8) * kB + c0);      // n8 tile 16 mt + 8
        w2f[mt][ks][3] = word(W2 + (r0 + 8) * kB + c0 + 8);
      }
  }
  cluster_sync();  // every CTA of the cluster runs before anyone stores into its shared memory

  // y[t, t2*B + 8*rank + jj] of tile n for jj < 8: the 8 warps' staged outputs, 16 bytes a store.
  const auto store_y = [&](int64_t n) {
    const T* z = zs + int(n % kZ) * kWarps * kRegion;
    const int64_t tok0 = tile_token(n);
    for (int i = tid; i < kT * kB; i += kThreads) {
      const int m = i / kB, t2 = i % kB;
      if (tok0 + m < f.tokens) {
        const int slot = monarch_y_slot<kB>(m, t2);
        uint32_t w[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {  // jj = 2q, 2q + 1
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
  };

#pragma unroll 1
  for (int64_t n = 0; n <= my_tiles; ++n) {  // the last round stores the last tile's y only
    cp_async_wait<kS - 2>();  // tile n's x landed (this thread's copies)
    __syncthreads();  // everyone's; x buffer (n - 1) % kS is free; tile n - 1's outputs are staged
    if (n == my_tiles) {
      if (n > 0) store_y(n - 1);
      break;
    }
    if (n + kS - 1 < my_tiles) load_x(n + kS - 1, int((n + kS - 1) % kS));
    cp_async_commit();
    T* z = zs + int(n % kZ) * kWarps * kRegion;

    {  // stage 1: warp = stage-1 block b = 8*rank + warp
      float acc[kMT][2][4] = {};
      const T* b_tile = xs + int(n % kS) * kT * kXP + warp * kB;
#pragma unroll
      for (int ks = 0; ks < kMT; ++ks) {
        uint32_t b_lo[2], b_hi[2];
        load_b_frags(b_lo, b_hi, b_tile, kXP, 0, 16 * ks);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_m16n8k16<T>(acc[mt][0], w1f[mt][ks], b_lo);
          mma_m16n8k16<T>(acc[mt][1], w1f[mt][ks], b_hi);
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
    cluster_arrive();
    if (n > 0) store_y(n - 1);  // while the cluster's other CTAs finish their stage 1
    cluster_wait();             // every CTA's stage 1 of tile n is in every CTA's z[n % 3]

    {  // stage 2: warp = stage-2 block j = 8*rank + jj, jj = warp
      T* region = z + warp * kRegion;
      float acc[kMT][2][4] = {};
#pragma unroll
      for (int ks = 0; ks < kMT; ++ks) {
        // A(t, i) = z[i][t]: ldmatrix .trans of matrix j at rows i = 16 ks + 8*(j/2) + lane%8,
        // tokens 8*(j%2) (core/mma.cuh's A register order: j%2 rows 8-15, j/2 k 8-15).
        uint32_t a[4];
        const int j = lane / 8;
        ldmatrix_x4_trans(a, region + monarch_zt_slot<kB>(warp, 16 * ks + 8 * (j / 2) + lane % 8, 8 * (j % 2)));
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt) {
          const uint32_t b_lo[2] = {w2f[nt][ks][0], w2f[nt][ks][1]}, b_hi[2] = {w2f[nt][ks][2], w2f[nt][ks][3]};
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
  }
  cp_async_wait<0>();  // only empty groups can be left
}

}  // namespace mmm
