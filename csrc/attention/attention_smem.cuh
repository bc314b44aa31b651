// Shared-memory tiles of the attention kernels: (rows, kD) tiles of 16-bit elements, filled by
// cp.async in 16-byte chunks and read by ldmatrix, whose row addresses are chunk starts too.
//
// Layout: row-major with a row pitch of exactly kD (no padding), the 16-byte chunks of each row
// XOR-swizzled within blocks of 64 columns (kD % 64 == 0: Swizzle<3,3,3> in CuTe's terms,
// chunk ^= row % 8) or of 32 columns (kD = 32, 96: chunk ^= (row / 2) % 4, CuTe's
// Swizzle<2,3,3> on 32-column blocks, FlashAttention-2's choice for these head dims). Eight
// consecutive rows (one 8x8 matrix of an ldmatrix, .trans or not) at one logical chunk then
// land in eight distinct 16-byte bank groups: no bank conflicts, and no padding, which is what
// makes two K/V pipeline stages fit next to Q for every head dim (attention_fwd_kernel.cuh).
// Both properties are proved at compile time for every compiled kD (swizzle_ok below).
#pragma once
#include <cstdint>

#include "core/cp_async.cuh"
#include "core/mma.cuh"

namespace mmm {

template <int kD_>
struct AttnSmemLayout {
  static constexpr int kD = kD_;
  static constexpr int kBlockCols = kD % 64 == 0 ? 64 : 32;  // columns per swizzle block
  static constexpr int kBlockChunks = kBlockCols / 8;
  static_assert(kD % 32 == 0, "attention smem tiles: head dims that are multiples of 32");

  // Element offset of (r, c) for a chunk start c (c % 8 == 0); the chunk's 8 elements follow.
  __host__ __device__ static constexpr int offset(int r, int c) {
    const int chunk = (c / 8) % kBlockChunks;
    const int sw = kBlockChunks == 8 ? (r & 7) : ((r >> 1) & 3);
    return r * kD + (c - c % kBlockCols) + (chunk ^ sw) * 8;
  }

  // (1) each row's chunks are a permutation of that row's kD / 8 chunk slots (so the tile is a
  // bijection onto rows * kD elements); (2) the 8 rows 8i..8i+7 at any one logical chunk fall in
  // 8 distinct bank groups (a bank group = 16 bytes of a 128-byte line = (offset / 8) % 8).
  // The pattern repeats every 8 rows, so rows 0..7 are a proof for all.
  static constexpr bool swizzle_ok() {
    for (int r = 0; r < 8; ++r) {
      bool seen[kD / 8] = {};
      for (int c = 0; c < kD; c += 8) {
        const int o = offset(r, c) - r * kD;
        if (o < 0 || o >= kD || o % 8 != 0 || seen[o / 8]) return false;
        seen[o / 8] = true;
      }
    }
    for (int c = 0; c < kD; c += 8) {
      bool group[8] = {};
      for (int r = 0; r < 8; ++r) {
        const int gidx = (offset(r, c) / 8) % 8;
        if (group[gidx]) return false;
        group[gidx] = true;
      }
    }
    return true;
  }
  static_assert(swizzle_ok(), "attention smem swizzle: not a bijection or not conflict-free");
};

// (kRows, kD) tile at rows [row0, row0 + kRows) of a global (rows, head_dim) matrix into `dst`,
// by the CTA's kThreads threads, in 16-byte cp.async chunks. Rows >= row_limit and columns >=
// head_dim are zero-filled (src-size 0: nothing is read; the source address passed is the
// matrix's first element, which is valid because the caller never launches on an empty one).
// The caller commits the group.
template <class L, int kRows, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* dst, const T* src, int64_t row_stride, int64_t row0,
                                                int64_t row_limit, int64_t head_dim) {
  constexpr int kChunks = L::kD / 8;
  constexpr int kIters = (kRows * kChunks + kThreads - 1) / kThreads;
  static_assert(sizeof(T) == 2, "16-bit elements");
#pragma unroll 1
  for (int i = 0; i < kIters; ++i) {
    const int c = threadIdx.x + i * kThreads;
    if (kRows * kChunks % kThreads == 0 || c < kRows * kChunks) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const bool pred = row0 + r < row_limit && col < head_dim;
      cp_async_16(dst + L::offset(r, col), pred ? src + (row0 + r) * row_stride + col : src, pred);
    }
  }
}

// The ldmatrix loaders below address 16x16 blocks at (row0, col0) with row0 and col0 multiples
// of 16. Each lane then adds a fixed (lane_row < 16, lane_chunk < 2) to the block corner, and
// because row0 % 16 == 0 and col0 / 8 is even, the swizzle of (row0 + lane_row, col0 + 8 ·
// lane_chunk) depends on the lane alone: offset = (row0 + lane_row)·kD + block base of col0 +
// ((col0 / 8 mod kBlockChunks) XOR x) · 8 with x = lane_chunk XOR swizzle(lane_row). Computing
// x once per kernel keeps the per-load address math to one XOR and an immediate offset; the
// generic offset() per load made ptxas keep dozens of addresses live and spill (d = 256).
template <class L>
struct AttnLaneAddr {
  int row_off = 0, x = 0;
  __host__ __device__ constexpr AttnLaneAddr(int lane_row, int lane_chunk)
      : row_off(lane_row * L::kD),
        x(lane_chunk ^ (L::kBlockChunks == 8 ? (lane_row & 7) : ((lane_row >> 1) & 3))) {}
  __host__ __device__ constexpr int at(int row0, int col0) const {
    return row0 * L::kD + row_off + (col0 - col0 % L::kBlockCols) + (((col0 / 8) % L::kBlockChunks) ^ x) * 8;
  }
  // at() agrees with L::offset for every block corner, lane row and lane chunk.
  static constexpr bool agrees() {
    for (int lr = 0; lr < 16; ++lr)
      for (int lc = 0; lc < 2; ++lc)
        for (int r0 = 0; r0 < 64; r0 += 16)
          for (int c0 = 0; c0 < L::kD; c0 += 16)
            if (AttnLaneAddr(lr, lc).at(r0, c0) != L::offset(r0 + lr, c0 + 8 * lc)) return false;
    return true;
  }
};

// Lane l's part of an A-operand block (and of a .trans B block): rows l % 16, chunks l / 16.
template <class L>
__device__ __forceinline__ AttnLaneAddr<L> lane_addr_a() {
  static_assert(AttnLaneAddr<L>::agrees(), "lane-constant swizzle");
  const int l = threadIdx.x % 32;
  return AttnLaneAddr<L>(l % 16, l / 16);
}
// ... of a B-operand block of an [n][k] tile (two n8 tiles): rows l % 8 + 8 (l / 16), chunks (l / 8) % 2.
template <class L>
__device__ __forceinline__ AttnLaneAddr<L> lane_addr_b() {
  const int l = threadIdx.x % 32;
  return AttnLaneAddr<L>(l % 8 + 8 * (l / 16), (l / 8) % 2);
}

// ldmatrix fragment loaders on an AttnSmemLayout tile: the recipes of core/mma.cuh's
// load_a_frag / load_b_frags / load_b_frags_kn with swizzled row addresses. Tiles are passed as
// 32-bit shared-window addresses (smem_addr of the tile's first element), so address math stays
// in one register per address. `la` comes from lane_addr_a, `lb` from lane_addr_b.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// A fragment of the 16x16 block at (row0, col0) of a row-major [m][k] tile.
template <class L>
__device__ __forceinline__ void ld_a(uint32_t (&a)[4], uint32_t tile, const AttnLaneAddr<L>& la, int row0, int col0) {
  ldsm_x4(a, tile + 2 * la.at(row0, col0));
}

// B fragments of the n8 tiles n0 and n0 + 8 over k0..k0+15 of an [n][k] tile (K in Q·Kᵀ).
template <class L>
__device__ __forceinline__ void ld_b(uint32_t (&b_lo)[2], uint32_t (&b_hi)[2], uint32_t tile, const AttnLaneAddr<L>& lb,
                                     int n0, int k0) {
  uint32_t r[4];
  ldsm_x4(r, tile + 2 * lb.at(n0, k0));
  b_lo[0] = r[0];
  b_lo[1] = r[1];
  b_hi[0] = r[2];
  b_hi[1] = r[3];
}

// B fragments of the n8 tiles n0 and n0 + 8 over k0..k0+15 of a [k][n] tile (V in P·V), .trans.
template <class L>
__device__ __forceinline__ void ld_b_kn(uint32_t (&b_lo)[2], uint32_t (&b_hi)[2], uint32_t tile,
                                        const AttnLaneAddr<L>& la, int k0, int n0) {
  uint32_t r[4];
  ldsm_x4_trans(r, tile + 2 * la.at(k0, n0));
  b_lo[0] = r[0];
  b_lo[1] = r[1];
  b_hi[0] = r[2];
  b_hi[1] = r[3];
}

}  // namespace mmm
