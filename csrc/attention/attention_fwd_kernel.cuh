// fused_attention forward on CUDA (sm_80+): FlashAttention-2's algorithm with mma.sync.
//
// A CTA owns 64 query rows of one (batch, head); each of its 4 warps owns 16 rows. Q is copied
// once into shared memory; K/V tiles of kBlockN keys stream through a kStages-deep cp.async
// pipeline (the schedule is written out above the main loop), so the loads of the next tiles
// overlap the tensor-core math of this one. Shared tiles are swizzled, unpadded and zero-filled
// past the sequence and head-dim ends (attention_smem.cuh). S = Q·Kᵀ and O += P·V run on tensor
// cores (ldmatrix + m16n8k16, fp32 accumulators). The softmax is online, in base 2 with the
// scale folded in; P stays in registers as the A operand of P·V. Key tiles the causal/window
// mask hides entirely are never visited; only tiles the mask or the sequence end cut through
// are masked per element. A row with no key gets out = 0 and lse = +inf.
#pragma once
#include <math.h>

#include "attention/attention_smem.cuh"
#include "attention/params.h"
#include "core/cp_async.cuh"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

namespace mmm {

// Shared memory a CTA may use: 80 KB keeps two CTAs per SM on sm_80 (164 KB per SM, 1 KB of it
// reserved per CTA); 99 KB is the opt-in maximum of sm_86/89/120, the smallest of any sm_80+ GPU
// (sm_80: 163 KB, sm_90: 227 KB). Every configuration below fits 99 KB, so one instantiation
// runs on every GPU and no fewer-stage fallback has to be compiled.
inline constexpr int kAttnSmemTwoCtasSm80 = 80 * 1024;
inline constexpr int kAttnSmemMinOptin = 99 * 1024;

// Pipeline depth: up to 3 stages (two tiles in flight behind the one being multiplied: enough to
// cover a DRAM round trip; past that, shared memory buys more by keeping two CTAs per SM) within
// the two-CTA budget, at least 2 (double buffering) wherever 2 fit the 99 KB minimum, else 1.
constexpr int attn_fwd_stages(int q_bytes, int stage_bytes) {
  int s = 3;
  while (s > 2 && q_bytes + s * stage_bytes > kAttnSmemTwoCtasSm80) --s;
  while (s > 1 && q_bytes + s * stage_bytes > kAttnSmemMinOptin) --s;
  return s;
}

// The one tile-size heuristic of the forward, per compiled head dimension (16-bit elements):
//   kD   kBlockN   Q (64 rows)   K+V per stage   kStages   shared memory
//   32     64         4 KB           8 KB            3          28 KB
//   64     64         8 KB          16 KB            3          56 KB
//   96     64        12 KB          24 KB            2          60 KB
//   128    64        16 KB          32 KB            2          80 KB
//   192    32        24 KB          24 KB            2          72 KB
//   256    32        32 KB          32 KB            2          96 KB
// kBlockN = 32 above d = 128: 64-key tiles would need 120 KB (d = 192) / 160 KB (d = 256) for
// two stages, past the 99 KB minimum, and the O accumulator (kD / 2 registers per thread)
// already takes most of the register file there.
template <int kD_, typename T_>
struct AttnFwdTraits {
  using T = T_;
  using Layout = AttnSmemLayout<kD_>;
  static constexpr int kD = kD_;
  static constexpr int kBlockM = 64, kWarps = 4, kThreads = 32 * kWarps;
  static constexpr int kBlockN = kD <= 128 ? 64 : 32;
  static constexpr int kQBytes = kBlockM * kD * int(sizeof(T));
  static constexpr int kStageBytes = 2 * kBlockN * kD * int(sizeof(T));  // one K tile + one V tile
  static constexpr int kStages = attn_fwd_stages(kQBytes, kStageBytes);
  static constexpr int kSmemBytes = kQBytes + kStages * kStageBytes;
  static constexpr int kNTiles = kBlockN / 8;  // n8 tiles of S per warp
  static constexpr int kDTiles = kD / 8;       // n8 tiles of O per warp
  static_assert(kD % 32 == 0 && kBlockN % 16 == 0 && kBlockM == 16 * kWarps, "tile shape");
  static_assert(kStages >= 2, "every compiled head dim double-buffers K/V");
  static_assert(kSmemBytes <= kAttnSmemMinOptin, "must fit every sm_80+ GPU's opt-in shared memory");
};

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1) attention_fwd_kernel(const AttentionFwdParams p) {
  using T = typename K::T;
  using L = typename K::Layout;
  constexpr int kM = K::kBlockM, kN = K::kBlockN, kS = K::kStages, kTile = kN * K::kD;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);  // (kM, kD)
  T* s_kv = s_q + kM * K::kD;               // kS stages of [K (kN, kD), V (kN, kD)]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const AttnLaneAddr<L> la = lane_addr_a<L>(), lb = lane_addr_b<L>();
  const int64_t bh = blockIdx.x, b = bh / p.heads_q, h = bh % p.heads_q;
  const int64_t hk = h / (p.heads_q / p.heads_kv);
  const int64_t m0 = int64_t(blockIdx.y) * kM;
  const int64_t sq = p.seqlen_q, sk = p.seqlen_k, shift = sk - sq;
  const int64_t wl = p.window_left, wr = p.window_right;
  const T* q = static_cast<const T*>(p.q) + b * p.q_s.batch + h * p.q_s.head;
  const T* k = static_cast<const T*>(p.k) + b * p.k_s.batch + hk * p.k_s.head;
  const T* v = static_cast<const T*>(p.v) + b * p.v_s.batch + hk * p.v_s.head;
  T* out = static_cast<T*>(p.out) + b * p.o_s.batch + h * p.o_s.head;
  const float scale_log2 = p.scale * 1.44269504088896340736f;  // exp(x) = exp2(x * log2 e)

  // Keys any row of this tile may see; tiles outside are skipped.
  const int64_t m_last = (m0 + kM < sq ? m0 + kM : sq) - 1;
  int64_t n_lo = wl >= 0 ? m0 + shift - wl : 0;
  int64_t n_hi = wr >= 0 ? m_last + shift + wr + 1 : sk;  // exclusive
  n_lo = n_lo < 0 ? 0 : n_lo;
  n_hi = n_hi > sk ? sk : n_hi;
  const int64_t nb_lo = n_lo / kN, n_tiles = n_hi > n_lo ? ceil_div(n_hi, kN) - nb_lo : 0;

  // Tile i (keys (nb_lo + i) * kN ...) into stage i % kS; commits nothing.
  auto load_kv = [&](int64_t i) {
    T* s_k = s_kv + (i % kS) * 2 * kTile;
    load_tile_async<L, kN, K::kThreads>(s_k, k, p.k_s.row, (nb_lo + i) * kN, sk, p.head_dim);
    load_tile_async<L, kN, K::kThreads>(s_k + kTile, v, p.v_s.row, (nb_lo + i) * kN, sk, p.head_dim);
  };

  // The pipeline. Every thread commits the same sequence of cp.async groups (empty ones
  // included, so wait_group counts agree across threads), one group per K/V tile:
  //   prologue   G0 = {Q, tile 0}, G1 = {tile 1}, ..., G(kS-2) = {tile kS-2}      (kS - 1 groups)
  //   iteration i (tile i lives in stage i % kS):
  //     wait_group<kS-2>   groups G0..G(i+kS-2) are committed, at most kS - 2 may still be
  //                        pending, so G0..Gi (Q and tile i) have landed for this thread;
  //     __syncthreads()    (a) every thread's share of tile i is visible to every warp;
  //                        (b) every warp has finished iteration i-1, the last reader of
  //                        stage (i-1) % kS;
  //     issue tile i+kS-1 into stage (i+kS-1) % kS = (i-1) % kS (free by (b)), commit it as
  //                        G(i+kS-1) (empty past the last tile);
  //     S = Q·Kᵀ, softmax, O += P·V on stage i % kS, while tiles i+1..i+kS-1 are in flight.
  //   With kS = 2: wait_group 0 at the top of iteration i (tile i), tile i+1 overwrites stage
  //   (i+1) % 2 = (i-1) % 2 after the barrier. One barrier per tile; after the loop,
  //   wait_group 0 drains the empty tail groups (and Q when no tile is visible) before exit.
  // Tail tiles: rows >= seqlen_k are zero-filled by cp.async (src-size 0) and masked below.
  load_tile_async<L, kM, K::kThreads>(s_q, q, p.q_s.row, m0, sq, p.head_dim);
#pragma unroll
  for (int i = 0; i < kS - 1; ++i) {
    if (i < n_tiles) load_kv(i);
    cp_async_commit();
  }

  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // rows g and g + 8
  float acc[K::kDTiles][4];
#pragma unroll
  for (int d = 0; d < K::kDTiles; ++d)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[d][c] = 0.f;

  for (int64_t i = 0; i < n_tiles; ++i) {
    cp_async_wait<kS - 2>();
    __syncthreads();
    if (i + kS - 1 < n_tiles) load_kv(i + kS - 1);
    cp_async_commit();

    const int64_t n0 = (nb_lo + i) * kN;
    const T* s_k = s_kv + (i % kS) * 2 * kTile;
    const T* s_v = s_k + kTile;
    float s[K::kNTiles][4];  // (16 rows, kN keys) of this warp, C-fragment layout
#pragma unroll
    for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[j][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < K::kD; kk += 16) {
      uint32_t a[4];
      ld_a<L>(a, smem_addr(s_q), la, warp * 16, kk);
#pragma unroll
      for (int j = 0; j < K::kNTiles; j += 2) {
        uint32_t b_lo[2], b_hi[2];
        ld_b<L>(b_lo, b_hi, smem_addr(s_k), lb, j * 8, kk);
        mma_m16n8k16<T>(s[j], a, b_lo);
        mma_m16n8k16<T>(s[j + 1], a, b_hi);
      }
    }

    // Scale into log2 units; mask only a tile that the sequence end or a mask bound cuts
    // through (the CTA's first row has the tightest right bound, its last row the tightest
    // left one). c = 0,1: row g; c = 2,3: row g + 8; column 2t + c%2.
    const bool cut = n0 + kN > sk || (wr >= 0 && n0 + kN - 1 > m0 + shift + wr) || (wl >= 0 && n0 < m_last + shift - wl);
    if (cut) {
#pragma unroll
      for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t row = m0 + warp * 16 + g + 8 * (c / 2), col = n0 + j * 8 + 2 * t + c % 2;
          const bool ok = col < sk && (wr < 0 || col <= row + shift + wr) && (wl < 0 || col >= row + shift - wl);
          s[j][c] = ok ? s[j][c] * scale_log2 : -INFINITY;
        }
    } else {
#pragma unroll
      for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[j][c] *= scale_log2;
    }

    // Online softmax; a row's 4 owners are lanes 4g..4g+3, joined by xor-shuffles over 1 and 2.
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float mx = row_max[rh];
#pragma unroll
      for (int j = 0; j < K::kNTiles; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * rh], s[j][2 * rh + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // No visible key yet: subtract 0, so exp2(-inf) = 0 instead of exp2(nan).
      const float m_use = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(row_max[rh] - m_use);
      row_max[rh] = mx;
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < K::kNTiles; ++j) {
        s[j][2 * rh] = exp2f(s[j][2 * rh] - m_use);
        s[j][2 * rh + 1] = exp2f(s[j][2 * rh + 1] - m_use);
        rs += s[j][2 * rh] + s[j][2 * rh + 1];
      }
      row_sum[rh] = row_sum[rh] * alpha + rs;  // this lane's part; joined at the end
#pragma unroll
      for (int d = 0; d < K::kDTiles; ++d) {
        acc[d][2 * rh] *= alpha;
        acc[d][2 * rh + 1] *= alpha;
      }
    }

    // O += P·V, P from registers: S tiles 2c and 2c+1 form the A fragment of keys 16c..16c+15.
#pragma unroll
    for (int kc = 0; kc < K::kNTiles / 2; ++kc) {
      const uint32_t a[4] = {pack2<T>(s[2 * kc][0], s[2 * kc][1]), pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                             pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                             pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
      for (int d = 0; d < K::kDTiles; d += 2) {
        uint32_t b_lo[2], b_hi[2];
        ld_b_kn<L>(b_lo, b_hi, smem_addr(s_v), la, kc * 16, d * 8);
        mma_m16n8k16<T>(acc[d], a, b_lo);
        mma_m16n8k16<T>(acc[d + 1], a, b_hi);
      }
    }
  }
  cp_async_wait<0>();  // the empty tail groups; Q itself when no tile was visible

#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    float l = row_sum[rh];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t row = m0 + warp * 16 + g + 8 * rh;
    if (row < sq) {
      T* o_row = out + row * p.o_s.row;
#pragma unroll
      for (int d = 0; d < K::kDTiles; ++d) {
        const int64_t col = d * 8 + 2 * t;  // head_dim is a multiple of 8: both columns or none
        if (col < p.head_dim)
          *reinterpret_cast<uint32_t*>(o_row + col) = pack2<T>(acc[d][2 * rh] * inv, acc[d][2 * rh + 1] * inv);
      }
      if (t == 0)
        p.lse[(b * p.heads_q + h) * sq + row] =
            l > 0.f ? (row_max[rh] + log2f(l)) * 0.69314718055994530942f : INFINITY;
    }
  }
}

}  // namespace mmm
