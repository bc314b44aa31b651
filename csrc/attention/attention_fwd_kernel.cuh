// fused_attention forward on CUDA (sm_80+): FlashAttention-2's algorithm with mma.sync.
//
// A CTA owns kBlockM query rows of one (batch, head); each of its 4 warps owns kMTiles slabs of
// 16 rows (two up to d = 128, so that every K/V fragment read from shared memory feeds both:
// see AttnFwdTraits). Q is copied once into shared memory (and, where it fits, into each warp's
// registers); K and V tiles of kBlockN keys stream, one after the other, through a ring of kRing
// cp.async buffers (the schedule is written out above the main loop), so the loads of the next
// tiles overlap the tensor-core math of this one. Shared tiles are swizzled, unpadded and zero-filled
// past the sequence and head-dim ends (attention_smem.cuh). S = Q·Kᵀ and O += P·V run on tensor
// cores (ldmatrix + m16n8k16, fp32 accumulators). The softmax is online, in base 2 with the
// scale folded in; P stays in registers as the A operand of P·V. Key tiles the causal/window
// mask hides entirely are never visited; only tiles the mask or the sequence end cut through
// are masked per element. A row with no key gets out = 0 and lse = +inf.
#pragma once
#include <math.h>

#include <type_traits>

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

// Pipeline depth: K and V tiles (half tiles: one (kBlockN, kD) operand each) stream through a
// ring of kRing buffers, kRing - 1 of them in flight behind the one being multiplied. Up to 5
// (two whole K/V tiles ahead: enough to cover a DRAM round trip; past that, shared memory buys
// more by keeping two CTAs per SM) within the two-CTA budget, at least 3 (the next K and V in
// flight while one is used) wherever 3 fit the 99 KB minimum. A ring of half tiles keeps as
// many loads in flight as double-buffered whole tiles in 3/4 of the space.
constexpr int attn_fwd_ring(int q_bytes, int half_bytes) {
  int r = 5;
  while (r > 3 && q_bytes + r * half_bytes > kAttnSmemTwoCtasSm80) --r;
  while (r > 2 && q_bytes + r * half_bytes > kAttnSmemMinOptin) --r;
  return r;
}

// The one tile-size heuristic of the forward, per compiled head dimension (16-bit elements):
//   kD   kMTiles  kBlockM  kBlockN     Q     K or V tile   kRing   shared memory
//   32      2       128       64      8 KB       4 KB         5         28 KB
//   64      2       128       64     16 KB       8 KB         5         56 KB
//   96      2       128       64     24 KB      12 KB         4         72 KB
//   128     2       128       64     32 KB      16 KB         3         80 KB
//   192     1        64       32     24 KB      12 KB         4         72 KB
//   256     1        64       32     32 KB      16 KB         3         80 KB
// Shared memory, not the tensor cores, bounds this loop: an ldmatrix.x4 takes 4 of the SM's
// shared-memory clocks and feeds 2 MMAs per 16-row slab it serves, while an H100 SM retires an
// m16n8k16 in about 1.5 clocks with mma.sync. With two slabs per warp every K/V fragment feeds
// 4 MMAs: ~1.5 shared clocks per MMA at d = 128 against ~2.8 with one (tests/emulate's counts
// mode prints this per kernel), which is FlashAttention-2's 128-row tile for these head dims.
// The price is registers: O (kMTiles * kD / 2 fp32 per thread) and S (kMTiles * kBlockN / 2),
// 192 of them at d = 128, which is why d = 192 and 256 keep one slab and 32-key tiles (64-key
// tiles there would need 120 KB / 160 KB for a ring of 3, past the 99 KB minimum).
template <int kD_, typename T_>
struct AttnFwdTraits {
  using T = T_;
  using Layout = AttnSmemLayout<kD_>;
  static constexpr int kD = kD_;
  static constexpr int kMTiles = kD <= 128 ? 2 : 1;  // 16-row slabs per warp
  static constexpr int kWarps = 4, kThreads = 32 * kWarps, kWarpRows = 16 * kMTiles, kBlockM = kWarpRows * kWarps;
  static constexpr int kBlockN = kD <= 128 ? 64 : 32;
  // The warp holds its Q rows in registers (kMTiles * kD / 4 per thread) where they fit next to
  // O and S, rather than reading each Q fragment from shared memory once per key tile: with one
  // slab (d = 192, 256: 3.1 -> 2.6 shared clocks per MMA) and with two up to d = 96 (1.6 ->
  // 1.25 by hand count; at d = 128 the 64 more registers would not fit).
  static constexpr bool kQRegs = kMTiles == 1 || kD <= 96;
  static constexpr int kQBytes = kBlockM * kD * int(sizeof(T));
  static constexpr int kHalfBytes = kBlockN * kD * int(sizeof(T));  // one K or one V tile
  static constexpr int kRing = attn_fwd_ring(kQBytes, kHalfBytes);
  static constexpr int kSmemBytes = kQBytes + kRing * kHalfBytes;
  static constexpr int kNTiles = kBlockN / 8;  // n8 tiles of S per warp
  static constexpr int kDTiles = kD / 8;       // n8 tiles of O per warp
  static_assert(kD % 32 == 0 && kBlockN % 16 == 0, "tile shape");
  static_assert(kRing >= 3, "every compiled head dim has the next K and V in flight");
  static_assert(kSmemBytes <= kAttnSmemMinOptin, "must fit every sm_80+ GPU's opt-in shared memory");
};

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1) attention_fwd_kernel(const AttentionFwdParams p) {
  using T = typename K::T;
  using L = typename K::Layout;
  constexpr int kM = K::kBlockM, kN = K::kBlockN, kR = K::kRing, kTile = kN * K::kD;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);  // (kM, kD)
  T* s_kv = s_q + kM * K::kD;               // kR ring buffers of (kN, kD): K or V tiles

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const AttnLaneAddr<L> la = lane_addr_a<L>(), lb = lane_addr_b<L>();
  const int64_t bh = blockIdx.x, b = bh / p.heads_q, h = bh % p.heads_q;
  const int64_t hk = h / (p.heads_q / p.heads_kv);
  // Query tiles in reverse launch order: under a causal mask the last tiles see the most keys,
  // and starting the longest CTAs first shortens the tail of the grid.
  const int m0 = int(gridDim.y - 1 - blockIdx.y) * kM, sq = int(p.seqlen_q), sk = int(p.seqlen_k), shift = sk - sq;
  // Positions in 32 bits, which leaves more registers to O and S than 64-bit math: the launcher
  // caps both lengths below 2^22 and clamps the windows to 2^24 (kAttnWindowClamp), so no sum of
  // positions and window bounds below overflows.
  const int wl = int(p.window_left), wr = int(p.window_right);
  const T* q = static_cast<const T*>(p.q) + b * p.q_s.batch + h * p.q_s.head;
  const T* k = static_cast<const T*>(p.k) + b * p.k_s.batch + hk * p.k_s.head;
  const T* v = static_cast<const T*>(p.v) + b * p.v_s.batch + hk * p.v_s.head;
  const float scale_log2 = p.scale * 1.44269504088896340736f;  // exp(x) = exp2(x * log2 e)

  // Keys any row of this tile may see; tiles outside are skipped.
  const int m_last = (m0 + kM < sq ? m0 + kM : sq) - 1;
  int n_lo = wl >= 0 ? m0 + shift - wl : 0;
  int n_hi = wr >= 0 ? m_last + shift + wr + 1 : sk;  // exclusive
  n_lo = n_lo < 0 ? 0 : n_lo;
  n_hi = n_hi > sk ? sk : n_hi;
  const int nb_lo = n_lo / kN, n_tiles = n_hi > n_lo ? (n_hi + kN - 1) / kN - nb_lo : 0;

  // Ring item h is K of tile h / 2 (h even) or V of it (h odd), keys (nb_lo + h / 2) * kN ...,
  // in buffer h % kR; nothing past the last tile. Commits nothing. The parity comes as a
  // compile-time constant (std::bool_constant) and the buffer as a running counter: run-time
  // choices of K or V and divisions by kR kept more registers live and spilled at d = 128.
  auto load_item = [&](int h, int buffer, auto is_v) {
    if (h / 2 >= n_tiles) return;
    load_tile_async<L, kN, K::kThreads>(s_kv + buffer * kTile, is_v() ? v : k, is_v() ? p.v_s.row : p.k_s.row,
                                        (nb_lo + h / 2) * kN, sk, p.head_dim);
  };

  // The pipeline. Every thread commits the same sequence of cp.async groups (empty ones
  // included, so wait_group counts agree across threads), one group per ring item:
  //   prologue   G0 = {Q, item 0}, G1 = {item 1}, ..., G(kR-2) = {item kR-2}     (kR - 1 groups)
  //   step h (item h: K of tile h/2 before S = Q·Kᵀ, V of it before O += P·V), buffer h % kR:
  //     wait_group<kR-2>   groups G0..G(h+kR-2) are committed, at most kR - 2 may still be
  //                        pending, so G0..Gh (Q and item h) have landed for this thread;
  //     __syncthreads()    (a) every thread's share of item h is visible to every warp;
  //                        (b) every warp has finished step h-1, the last reader of buffer
  //                        (h-1) % kR;
  //     issue item h+kR-1 into buffer (h+kR-1) % kR = (h-1) % kR (free by (b)), commit it as
  //                        G(h+kR-1) (empty past the last tile);
  //     the step's product on buffer h % kR, while items h+1..h+kR-1 are in flight.
  //   Two barriers per tile; after the loop, wait_group 0 drains the empty tail groups (and Q
  //   when no tile is visible) before exit.
  // Tail tiles: rows >= seqlen_k are zero-filled by cp.async (src-size 0) and masked below.
  load_tile_async<L, kM, K::kThreads>(s_q, q, p.q_s.row, m0, sq, p.head_dim);
  for (int i = 0; 2 * i < kR - 1; ++i) {  // items 0 .. kR-2
    load_item(2 * i, 2 * i, std::false_type{});
    cp_async_commit();
    if (2 * i + 1 < kR - 1) {
      load_item(2 * i + 1, 2 * i + 1, std::true_type{});
      cp_async_commit();
    }
  }
  // Step h's wait, barrier and issue of item h + kR - 1 (a V tile when is_v) into the buffer
  // step h-1 read; returns item h's buffer. `use` = h % kR.
  int use = 0;
  auto ring_step = [&](int h, auto is_v) {
    cp_async_wait<kR - 2>();
    __syncthreads();
    load_item(h + kR - 1, use == 0 ? kR - 1 : use - 1, is_v);
    cp_async_commit();
    const T* buffer = s_kv + use * kTile;
    use = use == kR - 1 ? 0 : use + 1;
    return buffer;
  };
  using NextAfterK = std::bool_constant<(kR - 1) % 2 == 1>;  // item 2i + kR - 1 is a V tile
  using NextAfterV = std::bool_constant<kR % 2 == 1>;        // item 2i + kR

  // Slab mt of this warp holds rows m0 + row0 + 16 mt ..., each lane rows g and g + 8 of it.
  constexpr int kMT = K::kMTiles;
  const int row0 = warp * K::kWarpRows;
  float row_max[kMT][2], row_sum[kMT][2], acc[kMT][K::kDTiles][4];
  uint32_t q_frag[K::kQRegs ? kMT : 1][K::kQRegs ? K::kD / 16 : 1][4];  // kQRegs: this warp's Q rows
  if constexpr (K::kQRegs) {
    cp_async_wait<0>();  // G0: Q (and the first ring items, needed next anyway)
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int kk = 0; kk < K::kD; kk += 16) ld_a<L>(q_frag[mt][kk / 16], smem_addr(s_q), la, row0 + 16 * mt, kk);
  }
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) row_max[mt][rh] = -INFINITY, row_sum[mt][rh] = 0.f;
#pragma unroll
    for (int d = 0; d < K::kDTiles; ++d)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mt][d][c] = 0.f;
  }

  for (int i = 0; i < n_tiles; ++i) {
    const int n0 = (nb_lo + i) * kN;
    const T* s_k = ring_step(2 * i, NextAfterK{});
    float s[kMT][K::kNTiles][4];  // (16 rows, kN keys) per slab, C-fragment layout
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[mt][j][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < K::kD; kk += 16) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (K::kQRegs)
#pragma unroll
          for (int r = 0; r < 4; ++r) a[mt][r] = q_frag[mt][kk / 16][r];
        else ld_a<L>(a[mt], smem_addr(s_q), la, row0 + 16 * mt, kk);
      }
#pragma unroll
      for (int j = 0; j < K::kNTiles; j += 2) {
        uint32_t b_lo[2], b_hi[2];
        ld_b<L>(b_lo, b_hi, smem_addr(s_k), lb, j * 8, kk);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_m16n8k16<T>(s[mt][j], a[mt], b_lo);
          mma_m16n8k16<T>(s[mt][j + 1], a[mt], b_hi);
        }
      }
    }

    // Scale into log2 units; mask only a tile that the sequence end or a mask bound cuts
    // through (the CTA's first row has the tightest right bound, its last row the tightest
    // left one). c = 0,1: row g; c = 2,3: row g + 8; column 2t + c%2.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[mt][j][c] *= scale_log2;
    if (n0 + kN > sk || (wr >= 0 && n0 + kN - 1 > m0 + shift + wr) || (wl >= 0 && n0 < m_last + shift - wl)) {
      // In tile coordinates (r = row - m0, c = col - n0) key c is visible to row r iff c < keys
      // and lo <= c - r <= hi (2^30: no bound).
      const int base = m0 - n0 + shift, keys = sk - n0;
      const int hi = wr < 0 ? 1 << 30 : base + wr, lo = wl < 0 ? -(1 << 30) : base - wl;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int r = row0 + 16 * mt + g + 8 * (c / 2), col = j * 8 + 2 * t + c % 2;
            if (col >= keys || col - r > hi || col - r < lo) s[mt][j][c] = -INFINITY;
          }
    }

    // Online softmax; a row's 4 owners are lanes 4g..4g+3, joined by xor-shuffles over 1 and 2.
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        float mx = row_max[mt][rh];
#pragma unroll
        for (int j = 0; j < K::kNTiles; ++j) mx = fmaxf(mx, fmaxf(s[mt][j][2 * rh], s[mt][j][2 * rh + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // No visible key yet: subtract 0, so exp2(-inf) = 0 instead of exp2(nan).
        const float m_use = mx == -INFINITY ? 0.f : mx;
        const float alpha = exp2f(row_max[mt][rh] - m_use);
        row_max[mt][rh] = mx;
        float rs = 0.f;
#pragma unroll
        for (int j = 0; j < K::kNTiles; ++j) {
          s[mt][j][2 * rh] = exp2f(s[mt][j][2 * rh] - m_use);
          s[mt][j][2 * rh + 1] = exp2f(s[mt][j][2 * rh + 1] - m_use);
          rs += s[mt][j][2 * rh] + s[mt][j][2 * rh + 1];
        }
        row_sum[mt][rh] = row_sum[mt][rh] * alpha + rs;  // this lane's part; joined at the end
#pragma unroll
        for (int d = 0; d < K::kDTiles; ++d) {
          acc[mt][d][2 * rh] *= alpha;
          acc[mt][d][2 * rh + 1] *= alpha;
        }
      }

    // O += P·V, P from registers: S tiles 2c and 2c+1 form the A fragment of keys 16c..16c+15.
    const T* s_v = ring_step(2 * i + 1, NextAfterV{});
#pragma unroll
    for (int kc = 0; kc < K::kNTiles / 2; ++kc) {
      uint32_t a[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * kc][0], s[mt][2 * kc][1]);
        a[mt][1] = pack2<T>(s[mt][2 * kc][2], s[mt][2 * kc][3]);
        a[mt][2] = pack2<T>(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
      }
#pragma unroll
      for (int d = 0; d < K::kDTiles; d += 2) {
        uint32_t b_lo[2], b_hi[2];
        ld_b_kn<L>(b_lo, b_hi, smem_addr(s_v), la, kc * 16, d * 8);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_m16n8k16<T>(acc[mt][d], a[mt], b_lo);
          mma_m16n8k16<T>(acc[mt][d + 1], a[mt], b_hi);
        }
      }
    }
  }
  cp_async_wait<0>();  // the empty tail groups; Q itself when no tile was visible

  // Output addresses next to their only use.
  T* out = static_cast<T*>(p.out) + b * p.o_s.batch + h * p.o_s.head;
  float* lse = p.lse + bh * sq;

#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
      float l = row_sum[mt][rh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int row = m0 + row0 + 16 * mt + g + 8 * rh;
      if (row < sq) {
        T* o_row = out + row * p.o_s.row;
#pragma unroll
        for (int d = 0; d < K::kDTiles; ++d) {
          const int col = d * 8 + 2 * t;  // head_dim is a multiple of 8: both columns or none
          if (col < p.head_dim)
            *reinterpret_cast<uint32_t*>(o_row + col) =
                pack2<T>(acc[mt][d][2 * rh] * inv, acc[mt][d][2 * rh + 1] * inv);
        }
        if (t == 0)
          lse[row] =
              l > 0.f ? (row_max[mt][rh] + log2f(l)) * 0.69314718055994530942f : INFINITY;
      }
    }
}

}  // namespace mmm
