// fused_attention forward on CUDA (sm_80+): FlashAttention-2's algorithm with mma.sync.
//
// A CTA owns 64 query rows of one (batch, head); each of its 4 warps owns 16 rows. Q, then each
// K/V tile of kBlockN keys, is copied into padded shared tiles with cp.async (zero-filled past
// the sequence and head-dim ends); S = Q·Kᵀ and O += P·V run on tensor cores (ldmatrix +
// m16n8k16, fp32 accumulators). The softmax is online, in base 2 with the scale folded in;
// P stays in registers as the A operand of P·V. Key tiles the causal/window mask hides entirely
// are never visited; partially hidden ones are masked per element. A row with no key gets
// out = 0 and lse = +inf.
// Not yet: double-buffered K/V (cp.async of tile j+1 during the math of tile j).
#pragma once
#include <math.h>

#include "attention/params.h"
#include "core/cp_async.cuh"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

namespace mmm {

// Tile sizes per compiled head dimension: 64 keys per tile up to d = 128; 32 above, where
// three 64-row tiles of 264-element rows (101 KB) would not fit a 99 KB (RTX 30/40) block.
template <int kD_, typename T_>
struct AttnFwdTraits {
  using T = T_;
  static constexpr int kD = kD_;
  static constexpr int kBlockM = 64, kWarps = 4, kThreads = 32 * kWarps;
  static constexpr int kBlockN = kD <= 128 ? 64 : 32;
  // Rows of kD + 8 elements: an odd number of 16-byte chunks, so the 8 row addresses of an
  // ldmatrix fall in 8 distinct bank groups (conflict-free), and rows stay 16-byte aligned.
  static constexpr int kPitch = kD + 8;
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kPitch * int(sizeof(T));
  static constexpr int kNTiles = kBlockN / 8;  // n8 tiles of S per warp
  static constexpr int kDTiles = kD / 8;       // n8 tiles of O per warp
  static_assert(kD % 16 == 0 && kBlockN % 16 == 0 && kBlockM == 16 * kWarps, "tile shape");
};

// rows x kD tile of src (row stride in elements) into dst (pitch kPitch), zero past row_limit
// rows or head_dim columns. The CTA's threads move 16-byte chunks; callers commit the group.
template <class K>
__device__ __forceinline__ void load_tile_async(typename K::T* dst, const typename K::T* src, int64_t row_stride,
                                                int64_t row0, int64_t row_limit, int rows, int64_t head_dim) {
  constexpr int kChunks = K::kD / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool pred = row0 + r < row_limit && col < head_dim;
    const typename K::T* from = pred ? src + (row0 + r) * row_stride + col : src;
    cp_async_16(dst + r * K::kPitch + col, from, pred);
  }
}

template <class K>
__global__ void __launch_bounds__(K::kThreads) attention_fwd_kernel(const AttentionFwdParams p) {
  using T = typename K::T;
  constexpr int kM = K::kBlockM, kN = K::kBlockN, kP = K::kPitch;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);  // (kM, kD)
  T* s_k = s_q + kM * kP;                   // (kN, kD)
  T* s_v = s_k + kN * kP;                   // (kN, kD)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
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

  load_tile_async<K>(s_q, q, p.q_s.row, m0, sq, kM, p.head_dim);
  cp_async_commit();

  // Keys any row of this tile may see; tiles outside are skipped.
  const int64_t m_last = (m0 + kM < sq ? m0 + kM : sq) - 1;
  int64_t n_lo = wl >= 0 ? m0 + shift - wl : 0;
  int64_t n_hi = wr >= 0 ? m_last + shift + wr + 1 : sk;  // exclusive
  n_lo = n_lo < 0 ? 0 : n_lo;
  n_hi = n_hi > sk ? sk : n_hi;
  const int64_t nb_lo = n_lo / kN, nb_hi = n_hi > n_lo ? ceil_div(n_hi, kN) : nb_lo;

  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // rows g and g + 8
  float acc[K::kDTiles][4];
#pragma unroll
  for (int d = 0; d < K::kDTiles; ++d)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[d][c] = 0.f;

  for (int64_t nb = nb_lo; nb < nb_hi; ++nb) {
    const int64_t n0 = nb * kN;
    load_tile_async<K>(s_k, k, p.k_s.row, n0, sk, kN, p.head_dim);
    load_tile_async<K>(s_v, v, p.v_s.row, n0, sk, kN, p.head_dim);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    float s[K::kNTiles][4];  // (16 rows, kN keys) of this warp, C-fragment layout
#pragma unroll
    for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[j][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < K::kD; kk += 16) {
      uint32_t a[4];
      load_a_frag(a, s_q, kP, warp * 16, kk);
#pragma unroll
      for (int j = 0; j < K::kNTiles; j += 2) {
        uint32_t b_lo[2], b_hi[2];
        load_b_frags(b_lo, b_hi, s_k, kP, j * 8, kk);
        mma_m16n8k16<T>(s[j], a, b_lo);
        mma_m16n8k16<T>(s[j + 1], a, b_hi);
      }
    }

    // Mask, scale into log2 units. c = 0,1: row g; c = 2,3: row g + 8; column 2t + c%2.
#pragma unroll
    for (int j = 0; j < K::kNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t row = m0 + warp * 16 + g + 8 * (c / 2), col = n0 + j * 8 + 2 * t + c % 2;
        const bool ok = col < sk && (wr < 0 || col <= row + shift + wr) && (wl < 0 || col >= row + shift - wl);
        s[j][c] = ok ? s[j][c] * scale_log2 : -INFINITY;
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
        load_b_frags_kn(b_lo, b_hi, s_v, kP, kc * 16, d * 8);
        mma_m16n8k16<T>(acc[d], a, b_lo);
        mma_m16n8k16<T>(acc[d + 1], a, b_hi);
      }
    }
    __syncthreads();  // the next tile overwrites s_k and s_v
  }
  cp_async_wait<0>();  // a tile with no visible key never waited for its Q copy

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
