// fused_attention backward on CUDA (sm_80+), FlashAttention-2's algorithm. The deterministic mode
// (p.deterministic; always at head dims 192 and 256, and where the GPU lacks the other's shared
// memory) is three kernels with no atomics, so dq, dk and dv are bitwise reproducible; the other
// mode is attention_bwd_atomic_kernel at the end of this file:
//
//   attention_bwd_dot_kernel   delta = rowsum(dO ∘ O) − dlse per query row (fp32 scratch).
//   attention_bwd_dkdv_kernel  a CTA per (batch, kv head, 16·kWarps keys[, half of D at d = 256]);
//                              each warp owns 16 keys and
//                              works on transposed scores, Sᵀ = K·Qᵀ, so Pᵀ and dSᵀ come out of
//                              the accumulators already in the A-operand layout of
//                              dV += Pᵀ·dO and dK += dSᵀ·Q: no shared-memory transposes. The
//                              query heads of a GQA group are summed in order inside the CTA.
//   attention_bwd_dq_kernel    a CTA per (batch, head, 16·kWarps queries) recomputes S = Q·Kᵀ and
//                              dP = dO·Vᵀ and accumulates dQ += dS·K in registers.
// P = exp(S·scale − lse) is recomputed from the forward's lse (+inf on rows with no key, so
// P = 0 there); masked entries are −inf before the exp. The price of determinism without
// atomics is computing S and dP twice. Shared tiles: attention_smem.cuh (swizzled, unpadded);
// each kernel's streamed tiles go through a kStages-deep cp.async pipeline, the forward's
// schedule (one group per step, wait_group<kStages-2> + one barrier at the top of each step,
// then the step kStages-1 ahead is issued into the stage the previous step read).
#pragma once
#include "attention/attention_fwd_kernel.cuh"

namespace mmm {

template <int kD_, typename T_>
struct AttnBwdTraits {
  using T = T_;
  using Layout = AttnSmemLayout<kD_>;
  static constexpr int kD = kD_;
  // Shared memory, not the tensor cores, bounds these loops (tests/emulate's counts mode prints
  // shared-memory clocks per MMA). The A operands of the score products (dkdv: this warp's K
  // and V rows; dq: its Q and dO rows) are the same at every step, so they are held in registers
  // (kD / 4 per thread each), which leaves the streamed B tiles as the only ldmatrix traffic of S
  // and dP: at d = 128, 2.25 shared clocks per MMA for dkdv and 2.33 for dq, against 2.75 and 3.0
  // when A is reloaded each step (by hand count; the counts mode's steady run: 2.31 and 2.42).
  // Registers per thread besides: dkdv's dK and dV accumulators (kD / kDSplit), dq's dQ (kD / 2),
  // and two (16, kBlockCols) score tiles (kBlockCols / 2 each). So: 64-column steps up to
  // d = 64, 32 at d = 96, 16 at d = 128 (once A is in registers the ratio does not depend on the
  // step width; with 32 the dkdv kernel spilled inside its loop) and at d = 192 (dK and dV take
  // 192 registers; 32-column steps spilled); A in registers up to d = 128 (sm_80's d = 128 dkdv
  // kernel spills 8 bytes, stored before its loop and reloaded after it). 2 warps above d = 128.
  // At d = 256, dK and dV alone would be 256 registers per thread: the dkdv kernel splits them
  // over kDSplit = 2 CTAs (blockIdx.z picks the half of the head dim), each recomputing the full
  // Sᵀ and dPᵀ (they contract over all of D), so nothing spills.
  static constexpr int kWarps = kD <= 128 ? 4 : 2, kThreads = 32 * kWarps;
  static constexpr int kBlockRows = 16 * kWarps;  // keys (dkdv) or queries (dq) per CTA
  // queries (dkdv) / keys (dq) per step
  static constexpr int kBlockCols = kD <= 64 ? 64 : kD == 96 || kD == 256 ? 32 : 16;
  static constexpr bool kARegs = kD <= 128;
  static constexpr int kDSplit = kD > 192 ? 2 : 1;
  // The streamed tiles (dkdv: Q, dO; dq: K, V) are double-buffered through cp.async with the
  // forward's schedule (attention_fwd_kernel.cuh); 2 stages fit 99 KB at every head dim.
  static constexpr int kStages = 2;
  static constexpr int kDOut = kD / kDSplit;  // dK/dV columns per dkdv CTA
  // dkdv: rows K, V; kStages x step Q, dO.  dq: rows Q, dO; kStages x step K, V.
  static constexpr int kSmemBytes = 2 * (kBlockRows + kStages * kBlockCols) * kD * int(sizeof(T));
  static constexpr int kCTiles = kBlockCols / 8, kDTiles = kD / 8, kDOutTiles = kDOut / 8;
  static_assert(kD % 32 == 0 && kBlockCols % 16 == 0 && kDOut % 16 == 0, "tile shape");
  static_assert(kDSplit == 1 || kDOut % Layout::kBlockCols == 0, "a dK/dV column split is a pointer shift");
  static_assert(kSmemBytes <= kAttnSmemMinOptin, "must fit every sm_80+ GPU's opt-in shared memory");
};

// One warp per query row: delta[(b*Hq + h)*Sq + i] = sum_d dO[i, d] * O[i, d] - dlse[i] (fp32;
// the lse output's gradient only shifts this row term, since d lse_i / d s_ij = P_ij). With the
// atomic-dQ kernel next, the warp also zeroes the row's dq_accum (B, Hq, Sq, head_dim) fp32: no
// separate memset launch.
template <typename T>
__global__ void __launch_bounds__(256)
    attention_bwd_dot_kernel(const AttentionBwdParams p, float* delta, float* dq_accum) {
  const AttentionFwdParams& f = p.fwd;
  const int64_t rows = f.batch * f.heads_q * f.seqlen_q;
  const int lane = threadIdx.x % 32;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    const int64_t i = r % f.seqlen_q, bh = r / f.seqlen_q, b = bh / f.heads_q, h = bh % f.heads_q;
    const T* o = static_cast<const T*>(f.out) + b * f.o_s.batch + h * f.o_s.head + i * f.o_s.row;
    const T* d = static_cast<const T*>(p.dout) + b * p.do_s.batch + h * p.do_s.head + i * p.do_s.row;
    float s = 0.f;
    for (int64_t c = lane; c < f.head_dim; c += 32) s += to_f(o[c]) * to_f(d[c]);
    s = warp_sum(s);
    if (lane == 0) delta[r] = p.dlse ? s - static_cast<const float*>(p.dlse)[r] : s;
    if (dq_accum != nullptr)  // 16-byte aligned rows: the accumulator is, and head_dim % 8 == 0
      for (int64_t c = 4 * lane; c < f.head_dim; c += 128)
        *reinterpret_cast<float4*>(dq_accum + r * f.head_dim + c) = make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

// Is key `col` visible from query `row`? (bottom-right aligned causal / window, see params.h)
__device__ __forceinline__ bool attn_visible(const AttentionFwdParams& f, int64_t row, int64_t col) {
  const int64_t shift = f.seqlen_k - f.seqlen_q;
  return row < f.seqlen_q && col < f.seqlen_k && (f.window_right < 0 || col <= row + shift + f.window_right) &&
         (f.window_left < 0 || col >= row + shift - f.window_left);
}

// The two score-shaped products of a backward step, over the whole head dim, for one warp's 16
// rows: x = A1·B1ᵀ and y = A2·B2ᵀ (16 x kBlockCols each, fp32), A [row][d], B tiles [col][d].
// dkdv: Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ; dq: S = Q·Kᵀ, dP = dO·Vᵀ (score_pair below).
// A operands either come from shared memory (ASmem: tiles a1, a2 at row0) at each k step or were
// loaded once into registers (ARegs), as score_a_operands chooses.
template <class K>
struct ASmem {
  uint32_t a1, a2;
  AttnLaneAddr<typename K::Layout> la;
  int row0;
  __device__ __forceinline__ void get(uint32_t (&a_1)[4], uint32_t (&a_2)[4], int kk) const {
    ld_a<typename K::Layout>(a_1, a1, la, row0, kk);
    ld_a<typename K::Layout>(a_2, a2, la, row0, kk);
  }
};
template <class K>
struct ARegs {
  uint32_t a1[K::kD / 16][4], a2[K::kD / 16][4];
  __device__ __forceinline__ void get(uint32_t (&a_1)[4], uint32_t (&a_2)[4], int kk) const {
#pragma unroll
    for (int r = 0; r < 4; ++r) a_1[r] = a1[kk / 16][r], a_2[r] = a2[kk / 16][r];
  }
};
// The score products' A operands, this warp's 16 rows from row0 of tiles a1 and a2 (landed
// with the first cp.async group): ARegs (K::kARegs; waits for every committed group, then loads
// fragments over the whole head dim) or ASmem.
template <class K>
__device__ __forceinline__ auto score_a_operands(uint32_t a1, uint32_t a2, const AttnLaneAddr<typename K::Layout>& la,
                                                 int row0) {
  if constexpr (K::kARegs) {
    cp_async_wait<0>();
    __syncthreads();
    ARegs<K> a;
#pragma unroll
    for (int kk = 0; kk < K::kD; kk += 16) {
      ld_a<typename K::Layout>(a.a1[kk / 16], a1, la, row0, kk);
      ld_a<typename K::Layout>(a.a2[kk / 16], a2, la, row0, kk);
    }
    return a;
  } else {
    return ASmem<K>{a1, a2, la, row0};
  }
}

template <class K, class A>
__device__ __forceinline__ void score_pair(float (&x)[K::kCTiles][4], float (&y)[K::kCTiles][4], const A& a,
                                           uint32_t b1, uint32_t b2, const AttnLaneAddr<typename K::Layout>& lb) {
  using T = typename K::T;
  using L = typename K::Layout;
#pragma unroll
  for (int j = 0; j < K::kCTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) x[j][c] = y[j][c] = 0.f;
#pragma unroll
  for (int kk = 0; kk < K::kD; kk += 16) {
    uint32_t a_1[4], a_2[4];
    a.get(a_1, a_2, kk);
#pragma unroll
    for (int j = 0; j < K::kCTiles; j += 2) {
      uint32_t b_lo[2], b_hi[2];
      ld_b<L>(b_lo, b_hi, b1, lb, j * 8, kk);
      mma_m16n8k16<T>(x[j], a_1, b_lo);
      mma_m16n8k16<T>(x[j + 1], a_1, b_hi);
      ld_b<L>(b_lo, b_hi, b2, lb, j * 8, kk);
      mma_m16n8k16<T>(y[j], a_2, b_lo);
      mma_m16n8k16<T>(y[j + 1], a_2, b_hi);
    }
  }
}

// The A fragment of columns kc·16 .. kc·16 + 15 of a (16, 8·N) fp32 accumulator tile, rounded to
// T: a score tile (Pᵀ, dSᵀ, dS) becomes the A operand of the next product without leaving
// registers.
template <typename T, int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&x)[N][4], int kc) {
  a[0] = pack2<T>(x[2 * kc][0], x[2 * kc][1]);
  a[1] = pack2<T>(x[2 * kc][2], x[2 * kc][3]);
  a[2] = pack2<T>(x[2 * kc + 1][0], x[2 * kc + 1][1]);
  a[3] = pack2<T>(x[2 * kc + 1][2], x[2 * kc + 1][3]);
}

// The query tiles of kC queries [mb_lo, mb_hi) that can see any of keys n0 .. n_last (the dK/dV
// kernels skip the others). I: the kernel's position type.
template <int kC, typename I>
__device__ __forceinline__ void visible_query_tiles(I n0, I n_last, I sq, I shift, I wl, I wr, I& mb_lo, I& mb_hi) {
  I m_lo = wr >= 0 ? n0 - shift - wr : 0;
  I m_hi = wl >= 0 ? n_last - shift + wl + 1 : sq;  // exclusive
  m_lo = m_lo < 0 ? 0 : m_lo;
  m_hi = m_hi > sq ? sq : m_hi;
  mb_lo = m_lo / kC;
  mb_hi = m_hi > m_lo ? (m_hi + kC - 1) / kC : mb_lo;
}

// A dK/dV CTA's resident tiles: K and V rows n0 .. n0 + kBlockRows - 1 of kv head hk (cp.async;
// the caller commits).
template <class K>
__device__ __forceinline__ void load_kv_async(const AttentionBwdParams& p, typename K::T* s_k, typename K::T* s_v,
                                              int64_t b, int64_t hk, int64_t n0) {
  using T = typename K::T;
  const AttentionFwdParams& f = p.fwd;
  load_tile_async<typename K::Layout, K::kBlockRows, K::kThreads>(
      s_k, static_cast<const T*>(f.k) + b * f.k_s.batch + hk * f.k_s.head, f.k_s.row, n0, f.seqlen_k, f.head_dim);
  load_tile_async<typename K::Layout, K::kBlockRows, K::kThreads>(
      s_v, static_cast<const T*>(f.v) + b * f.v_s.batch + hk * f.v_s.head, f.v_s.row, n0, f.seqlen_k, f.head_dim);
}

// A dK/dV step's streamed tiles: Q and dO rows m0 .. m0 + kBlockCols - 1 of query head h, into
// dst and dst + kBlockCols·kD (cp.async; the caller commits).
template <class K>
__device__ __forceinline__ void load_q_do_async(const AttentionBwdParams& p, typename K::T* dst, int64_t b, int64_t h,
                                                int64_t m0) {
  using T = typename K::T;
  const AttentionFwdParams& f = p.fwd;
  load_tile_async<typename K::Layout, K::kBlockCols, K::kThreads>(
      dst, static_cast<const T*>(f.q) + b * f.q_s.batch + h * f.q_s.head, f.q_s.row, m0, f.seqlen_q, f.head_dim);
  load_tile_async<typename K::Layout, K::kBlockCols, K::kThreads>(
      dst + K::kBlockCols * K::kD, static_cast<const T*>(p.dout) + b * p.do_s.batch + h * p.do_s.head, p.do_s.row,
      m0, f.seqlen_q, f.head_dim);
}

// dV += Pᵀ·dO and dK += dSᵀ·Q over queries kc·16 .. kc·16 + 15 of a step, for kM 16-key slabs
// (A operands a_p[m], a_ds[m]) and N·8 columns of D from column c0 of the tiles (the B operands
// from [query][d] row-major; each B fragment feeds every slab).
template <class K, int kM, int N>
__device__ __forceinline__ void accumulate_dkdv(float (&dk)[kM][N][4], float (&dv)[kM][N][4], const uint32_t (&a_p)[kM][4],
                                                const uint32_t (&a_ds)[kM][4], uint32_t s_q, uint32_t s_do,
                                                const AttnLaneAddr<typename K::Layout>& la, int kc, int c0) {
  using T = typename K::T;
  using L = typename K::Layout;
#pragma unroll
  for (int d = 0; d < N; d += 2) {
    uint32_t b_lo[2], b_hi[2];
    ld_b_kn<L>(b_lo, b_hi, s_do, la, kc * 16, c0 + d * 8);
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      mma_m16n8k16<T>(dv[m][d], a_p[m], b_lo);
      mma_m16n8k16<T>(dv[m][d + 1], a_p[m], b_hi);
    }
    ld_b_kn<L>(b_lo, b_hi, s_q, la, kc * 16, c0 + d * 8);
#pragma unroll
    for (int m = 0; m < kM; ++m) {
      mma_m16n8k16<T>(dk[m][d], a_ds[m], b_lo);
      mma_m16n8k16<T>(dk[m][d + 1], a_ds[m], b_hi);
    }
  }
}

// This warp's rows of dK (times the scale) and dV, keys key0 + g and key0 + g + 8 (those < sk),
// columns d0 .. d0 + N·8 - 1 (those < head_dim).
template <typename T, int N>
__device__ __forceinline__ void store_dkdv(const AttentionBwdParams& p, const float (&dk)[N][4], const float (&dv)[N][4],
                                           int64_t b, int64_t hk, int64_t key0, int d0) {
  const AttentionFwdParams& f = p.fwd;
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  T* dk_out = static_cast<T*>(p.dk) + b * p.dk_s.batch + hk * p.dk_s.head;
  T* dv_out = static_cast<T*>(p.dv) + b * p.dv_s.batch + hk * p.dv_s.head;
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int64_t key = key0 + g + 8 * rh;
    if (key >= f.seqlen_k) continue;
#pragma unroll
    for (int d = 0; d < N; ++d) {
      const int64_t col = d0 + d * 8 + 2 * t;
      if (col < f.head_dim) {
        *reinterpret_cast<uint32_t*>(dk_out + key * p.dk_s.row + col) =
            pack2<T>(dk[d][2 * rh] * f.scale, dk[d][2 * rh + 1] * f.scale);
        *reinterpret_cast<uint32_t*>(dv_out + key * p.dv_s.row + col) = pack2<T>(dv[d][2 * rh], dv[d][2 * rh + 1]);
      }
    }
  }
}

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1) attention_bwd_dkdv_kernel(const AttentionBwdParams p, const float* delta) {
  using T = typename K::T;
  using L = typename K::Layout;
  constexpr int kR = K::kBlockRows, kC = K::kBlockCols, kD = K::kD;
  const AttentionFwdParams& f = p.fwd;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kS = K::kStages, kTile = kC * kD;
  T* s_k = reinterpret_cast<T*>(smem_raw);  // (kR keys, kD)
  T* s_v = s_k + kR * kD;                   // (kR keys, kD)
  T* s_qdo = s_v + kR * kD;                 // kS stages of [Q (kC queries, kD), dO (kC queries, kD)]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const AttnLaneAddr<L> la = lane_addr_a<L>(), lb = lane_addr_b<L>();
  const int64_t bhk = blockIdx.x, b = bhk / f.heads_kv, hk = bhk % f.heads_kv;
  const int64_t n0 = int64_t(blockIdx.y) * kR;
  const int64_t sq = f.seqlen_q, sk = f.seqlen_k, shift = sk - sq;
  const int64_t group = f.heads_q / f.heads_kv;
  const float scale_log2 = f.scale * 1.44269504088896340736f;

  const int d0 = int(blockIdx.z) * K::kDOut;  // this CTA's dK/dV columns: d0 .. d0 + kDOut
  load_kv_async<K>(p, s_k, s_v, b, hk, n0);

  int64_t mb_lo, mb_hi;  // the query tiles that can see any of these keys
  visible_query_tiles<kC, int64_t>(n0, (n0 + kR < sk ? n0 + kR : sk) - 1, sq, shift, f.window_left, f.window_right,
                                   mb_lo, mb_hi);

  float dk[1][K::kDOutTiles][4], dv[1][K::kDOutTiles][4];  // this warp's 16 keys x columns d0.. of D
#pragma unroll
  for (int d = 0; d < K::kDOutTiles; ++d)
#pragma unroll
    for (int c = 0; c < 4; ++c) dk[0][d][c] = dv[0][d][c] = 0.f;

  // Steps: (query head h of the group, query tile mb), h-major, numbered 0 .. n_steps-1; step i
  // lives in stage i % 2. G0 = {K, V, step 0}, then one group per step (the schedule of the file
  // header with kStages = 2). One (h, mb) counter serves both the step computed and the step
  // loaded one ahead, advanced by counting in 32 bits (heads and query tiles < 2^31) rather than
  // by dividing i: the d = 192 kernel has no registers to spare.
  static_assert(kS == 2, "one (h, mb) counter: the load runs exactly one step ahead");
  const int64_t n_steps = group * (mb_hi - mb_lo);
  int h = int(hk * group), mb = int(mb_lo);  // step 0; at the top of iteration i, step i
  auto load_step = [&](int64_t i) {  // step i = (h, mb)
    load_q_do_async<K>(p, s_qdo + (i % kS) * 2 * kTile, b, h, int64_t(mb) * kC);
  };
  if (n_steps > 0) load_step(0);
  cp_async_commit();
  // Sᵀ's and dPᵀ's A operands: this warp's K and V rows (G0; step 0 is needed next anyway).
  const auto a_kv = score_a_operands<K>(smem_addr(s_k), smem_addr(s_v), la, warp * 16);

  for (int64_t i = 0; i < n_steps; ++i) {
    cp_async_wait<kS - 2>();
    __syncthreads();
    const int64_t m0 = int64_t(mb) * kC;  // step i
    const float* lse = f.lse + (b * f.heads_q + h) * sq;
    const float* dl = delta + (b * f.heads_q + h) * sq;
    if (++mb == mb_hi) mb = int(mb_lo), ++h;  // step i + 1
    if (i + 1 < n_steps) load_step(i + 1);
    cp_async_commit();
    {
      const T* s_q = s_qdo + (i % kS) * 2 * kTile;  // (kC queries, kD)
      const T* s_do = s_q + kTile;                  // (kC queries, kD)

      // Sᵀ (16 keys x kC queries) = K·Qᵀ and dPᵀ = V·dOᵀ.
      float st[K::kCTiles][4], dpt[K::kCTiles][4];
      score_pair<K>(st, dpt, a_kv, smem_addr(s_q), smem_addr(s_do), lb);
      // Pᵀ = exp(Sᵀ·scale − lse[query]); dSᵀ = Pᵀ ∘ (dPᵀ − delta[query]). Row = key, col = query.
      // Every element is tested (a cut-tile-only test, as in the dq kernel, spilled here).
#pragma unroll
      for (int j = 0; j < K::kCTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t key = n0 + warp * 16 + g + 8 * (c / 2), query = m0 + j * 8 + 2 * t + c % 2;
          const bool ok = attn_visible(f, query, key);
          const float l = ok ? lse[query] : INFINITY;
          const float pt = ok ? exp2f(st[j][c] * scale_log2 - l * 1.44269504088896340736f) : 0.f;
          st[j][c] = pt;
          dpt[j][c] = ok ? pt * (dpt[j][c] - dl[query]) : 0.f;
        }
      // dV += Pᵀ·dO and dK += dSᵀ·Q (scale applied at the end); d0 % 64 == 0: a pointer shift.
#pragma unroll
      for (int kc = 0; kc < K::kCTiles / 2; ++kc) {
        uint32_t a_p[1][4], a_ds[1][4];
        acc_to_a<T>(a_p[0], st, kc);
        acc_to_a<T>(a_ds[0], dpt, kc);
        accumulate_dkdv<K>(dk, dv, a_p, a_ds, smem_addr(s_q + d0), smem_addr(s_do + d0), la, kc, 0);
      }
    }
  }
  cp_async_wait<0>();  // the empty tail groups; K, V themselves when no query sees these keys
  store_dkdv<T>(p, dk[0], dv[0], b, hk, n0 + warp * 16, d0);
}

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1) attention_bwd_dq_kernel(const AttentionBwdParams p, const float* delta) {
  using T = typename K::T;
  using L = typename K::Layout;
  constexpr int kR = K::kBlockRows, kC = K::kBlockCols, kD = K::kD, kNT = K::kThreads;
  const AttentionFwdParams& f = p.fwd;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kS = K::kStages, kTile = kC * kD;
  T* s_q = reinterpret_cast<T*>(smem_raw);  // (kR queries, kD)
  T* s_do = s_q + kR * kD;                  // (kR queries, kD)
  T* s_kv = s_do + kR * kD;                 // kS stages of [K (kC keys, kD), V (kC keys, kD)]

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const AttnLaneAddr<L> la = lane_addr_a<L>(), lb = lane_addr_b<L>();
  const int64_t bh = blockIdx.x, b = bh / f.heads_q, h = bh % f.heads_q;
  const int64_t hk = h / (f.heads_q / f.heads_kv);
  const int64_t m0 = int64_t(gridDim.y - 1 - blockIdx.y) * kR;  // longest CTAs first (as the forward)
  const int64_t sq = f.seqlen_q, sk = f.seqlen_k, shift = sk - sq;
  const float scale_log2 = f.scale * 1.44269504088896340736f;
  const T* k = static_cast<const T*>(f.k) + b * f.k_s.batch + hk * f.k_s.head;
  const T* v = static_cast<const T*>(f.v) + b * f.v_s.batch + hk * f.v_s.head;

  load_tile_async<L, kR, kNT>(s_q, static_cast<const T*>(f.q) + b * f.q_s.batch + h * f.q_s.head, f.q_s.row, m0, sq,
                              f.head_dim);
  load_tile_async<L, kR, kNT>(s_do, static_cast<const T*>(p.dout) + b * p.do_s.batch + h * p.do_s.head, p.do_s.row, m0,
                              sq, f.head_dim);

  const int64_t m_last = (m0 + kR < sq ? m0 + kR : sq) - 1;
  int64_t n_lo = f.window_left >= 0 ? m0 + shift - f.window_left : 0;
  int64_t n_hi = f.window_right >= 0 ? m_last + shift + f.window_right + 1 : sk;
  n_lo = n_lo < 0 ? 0 : n_lo;
  n_hi = n_hi > sk ? sk : n_hi;
  const int64_t nb_lo = n_lo / kC, n_tiles = n_hi > n_lo ? ceil_div(n_hi, kC) - nb_lo : 0;

  // Key tile i (keys (nb_lo + i) * kC ...) into stage i % kS; G0 = {Q, dO, tile 0}, then one
  // group per tile (the forward's schedule, see the file header).
  auto load_kv = [&](int64_t i) {
    T* dst = s_kv + (i % kS) * 2 * kTile;
    load_tile_async<L, kC, kNT>(dst, k, f.k_s.row, (nb_lo + i) * kC, sk, f.head_dim);
    load_tile_async<L, kC, kNT>(dst + kTile, v, f.v_s.row, (nb_lo + i) * kC, sk, f.head_dim);
  };
#pragma unroll
  for (int i = 0; i < kS - 1; ++i) {
    if (i < n_tiles) load_kv(i);
    cp_async_commit();
  }
  // S's and dP's A operands: this warp's Q and dO rows (G0; tile 0 is needed next anyway).
  const auto a_qdo = score_a_operands<K>(smem_addr(s_q), smem_addr(s_do), la, warp * 16);

  const float* lse = f.lse + (b * f.heads_q + h) * sq;
  const float* dl = delta + (b * f.heads_q + h) * sq;
  float row_lse[2], row_delta[2];  // rows g and g + 8 of this warp
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int64_t row = m0 + warp * 16 + g + 8 * rh;
    row_lse[rh] = row < sq ? lse[row] : INFINITY;
    row_delta[rh] = row < sq ? dl[row] : 0.f;
  }
  float dq[K::kDTiles][4];
#pragma unroll
  for (int d = 0; d < K::kDTiles; ++d)
#pragma unroll
    for (int c = 0; c < 4; ++c) dq[d][c] = 0.f;

  for (int64_t i = 0; i < n_tiles; ++i) {
    cp_async_wait<kS - 2>();
    __syncthreads();
    if (i + kS - 1 < n_tiles) load_kv(i + kS - 1);
    cp_async_commit();
    const int64_t n0 = (nb_lo + i) * kC;
    const T* s_k = s_kv + (i % kS) * 2 * kTile;  // (kC keys, kD)
    const T* s_v = s_k + kTile;                  // (kC keys, kD)

    // S (16 queries x kC keys) = Q·Kᵀ and dP = dO·Vᵀ.
    float s[K::kCTiles][4], dp[K::kCTiles][4];
    score_pair<K>(s, dp, a_qdo, smem_addr(s_k), smem_addr(s_v), lb);
    // dS = P ∘ (dP − delta[row]) with P = exp(S·scale − lse[row]), for every element; then, on a
    // tile the mask or a sequence end cuts through, hidden elements zeroed (a select: their exp
    // may overflow), as the forward masks only the tiles it cuts.
#pragma unroll
    for (int j = 0; j < K::kCTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int rh = c / 2;
        const float pr = exp2f(s[j][c] * scale_log2 - row_lse[rh] * 1.44269504088896340736f);
        dp[j][c] = pr * (dp[j][c] - row_delta[rh]);
      }
    if (m0 + kR > sq || n0 + kC > sk || (f.window_right >= 0 && n0 + kC - 1 > m0 + shift + f.window_right) ||
        (f.window_left >= 0 && n0 < m0 + kR - 1 + shift - f.window_left)) {
#pragma unroll
      for (int j = 0; j < K::kCTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t row = m0 + warp * 16 + g + 8 * (c / 2), col = n0 + j * 8 + 2 * t + c % 2;
          if (!attn_visible(f, row, col)) dp[j][c] = 0.f;
        }
    }
    // dQ += dS·K: B from [key][d] row-major.
#pragma unroll
    for (int kc = 0; kc < K::kCTiles / 2; ++kc) {
      uint32_t a_ds[4];
      acc_to_a<T>(a_ds, dp, kc);
#pragma unroll
      for (int d = 0; d < K::kDTiles; d += 2) {
        uint32_t b_lo[2], b_hi[2];
        ld_b_kn<L>(b_lo, b_hi, smem_addr(s_k), la, kc * 16, d * 8);
        mma_m16n8k16<T>(dq[d], a_ds, b_lo);
        mma_m16n8k16<T>(dq[d + 1], a_ds, b_hi);
      }
    }
  }
  cp_async_wait<0>();  // the empty tail groups; Q, dO themselves when no key is visible

  T* dq_out = static_cast<T*>(p.dq) + b * p.dq_s.batch + h * p.dq_s.head;
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int64_t row = m0 + warp * 16 + g + 8 * rh;
    if (row >= sq) continue;
#pragma unroll
    for (int d = 0; d < K::kDTiles; ++d) {
      const int64_t col = d * 8 + 2 * t;
      if (col < f.head_dim)
        *reinterpret_cast<uint32_t*>(dq_out + row * p.dq_s.row + col) =
            pack2<T>(dq[d][2 * rh] * f.scale, dq[d][2 * rh + 1] * f.scale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The non-deterministic backward (p.deterministic == false; head dims 32 to 128, on GPUs whose
// opt-in shared memory holds kSmemBytes: attention_bwd_uses_atomic_dq). FlashAttention-2's one
// pass: the five products S, dP, dV, dK and dQ per (key block, query tile), with dQ added into
// an fp32 accumulator with atomics (then scaled and converted by attention_bwd_dq_convert_kernel),
// instead of the deterministic pair above, which recomputes S and dP in the dq kernel (seven
// products). The order of the atomic adds varies from run to run, and so do dQ's last bits;
// dK's and dV's do not.
//
// A CTA owns 128 keys and steps over kBlockCols-query tiles: 128 at d <= 64 where the GPU's
// opt-in shared memory holds it, else 64 (FlashAttention-2's choices); the atomic traffic per
// FLOP is FlashAttention-2's (one fp32 add per dQ element per 128 keys). The 8 warps tile each
// product as FlashAttention-2 does, so that every ldmatrix fragment feeds two or more MMAs:
//   Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ   4 x 2 blocks of 32 keys x kBlockCols / 2 queries (transposed
//                            scores, so Pᵀ and dSᵀ are the A operands of dV and dK as they are
//                            stored); Pᵀ and dSᵀ go to two shared (keys x queries) tiles as the
//                            16-bit values the products use;
//   dQ = dS·K                8 blocks of kQRows queries x kQCols columns over the 128 keys, as
//                            square as 16-multiples allow (32 x 32 where they can be), dS read
//                            with ldmatrix.trans from the dSᵀ tile, K from the resident K tile;
//   dV += Pᵀ·dO, dK += dSᵀ·Q  4 x 2 blocks of 32 keys x kD / 2 columns, accumulated over the
//                            steps in registers (the warp's slab of keys is its score slab's).
// A warp owning 16 keys x 64 queries of the scores instead (the dkdv kernel's shape, Pᵀ and dSᵀ
// passed in registers) reads all of Q and dO for each of S, dP, dV and dK: by the emulation's
// counts mode (Sq = Sk = 512) 2.38 shared-memory clocks per MMA at d = 128, against 2.02 for this
// tiling (FlashAttention-2's tiling by the same hand count: ~2.0). At d = 64 this tiling gives
// 2.52 with 64-query steps and 2.12 with 128 (dQ's warp blocks grow from 32 x 16 to 32 x 32;
// the score tiles are then 128 registers per thread, and the kernel spills 16 bytes on sm_80).
template <int kD_, typename T_, int kBlockCols_ = 64>
struct AttnBwdAtomicTraits {
  using T = T_;
  using Layout = AttnSmemLayout<kD_>;
  using ScoreLayout = AttnSmemLayout<kBlockCols_>;  // the Pᵀ and dSᵀ tiles: (kBlockRows keys, kBlockCols queries)
  static constexpr int kD = kD_;
  static constexpr int kWarps = 8, kThreads = 32 * kWarps;
  static constexpr int kBlockRows = 128;          // keys per CTA
  static constexpr int kBlockCols = kBlockCols_;  // queries per step
  static constexpr int kStages = 2;
  // Scores and dK/dV: 4 slabs of 32 keys (warp % 4) x 2 halves (warp / 4) of the queries or of D.
  static constexpr int kSlabKeys = 32, kSlabTiles = kSlabKeys / 16, kHalfQ = kBlockCols / 2, kHalfD = kD / 2;
  static constexpr int kHalfDTiles = kHalfD / 8;
  // A warp's block of a step's dQ: kQRows queries x kQCols columns (kQColBlocks blocks across D).
  static constexpr int kQColBlocks = kD % 64 == 0 ? (kBlockCols == 128 ? 2 : 4) : 2;
  static constexpr int kQRows = kBlockCols * kQColBlocks / kWarps, kQCols = kD / kQColBlocks;
  static constexpr int kSmemBytes =
      (2 * (kBlockRows + kStages * kBlockCols) * kD + 2 * kBlockRows * kBlockCols) * int(sizeof(T));
  static_assert(kD == 32 || kD == 64 || kD == 96 || kD == 128,
                "the atomic-dQ backward is compiled for head dims 32 to 128 (dK and dV take kD registers "
                "per thread next to the score tiles)");
  static_assert(kBlockCols == 64 || (kBlockCols == 128 && kD <= 64),
                "128-query steps at d <= 64 only (the score tiles take 128 registers per thread there)");
  static_assert(kBlockRows == 4 * kSlabKeys && kHalfD % 16 == 0 && kHalfQ % 16 == 0, "score and dK/dV warp blocks");
  static_assert((kBlockCols / kQRows) * (kD / kQCols) == kWarps && kQRows % 16 == 0 && kQCols % 16 == 0,
                "dQ warp blocks");
};

// x = A·Bᵀ for a warp's kSlabTiles 16-row slabs from row0 of tile a and kHalfQ columns from col0
// of tile b (both [row][d] tiles), over the whole head dim: each B fragment feeds every slab.
template <class K>
__device__ __forceinline__ void slab_scores(float (&x)[K::kSlabTiles][K::kHalfQ / 8][4], uint32_t a, uint32_t b,
                                            const AttnLaneAddr<typename K::Layout>& la,
                                            const AttnLaneAddr<typename K::Layout>& lb, int row0, int col0) {
  using T = typename K::T;
  using L = typename K::Layout;
  constexpr int kM = K::kSlabTiles, kN = K::kHalfQ / 8;
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) x[m][j][c] = 0.f;
#pragma unroll
  for (int kk = 0; kk < K::kD; kk += 16) {
    uint32_t fa[kM][4];
#pragma unroll
    for (int m = 0; m < kM; ++m) ld_a<L>(fa[m], a, la, row0 + 16 * m, kk);
#pragma unroll
    for (int j = 0; j < kN; j += 2) {
      uint32_t b_lo[2], b_hi[2];
      ld_b<L>(b_lo, b_hi, b, lb, col0 + j * 8, kk);
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        mma_m16n8k16<T>(x[m][j], fa[m], b_lo);
        mma_m16n8k16<T>(x[m][j + 1], fa[m], b_hi);
      }
    }
  }
}

template <class K>
__global__ void __launch_bounds__(K::kThreads, 1)
    attention_bwd_atomic_kernel(const AttentionBwdParams p, const float* delta, float* dq_accum) {
  using T = typename K::T;
  using L = typename K::Layout;
  using LS = typename K::ScoreLayout;
  constexpr int kR = K::kBlockRows, kC = K::kBlockCols, kD = K::kD;
  constexpr int kM = K::kSlabTiles, kN = K::kHalfQ / 8;
  const AttentionFwdParams& f = p.fwd;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  constexpr int kS = K::kStages, kTile = kC * kD;
  T* s_k = reinterpret_cast<T*>(smem_raw);  // (kR keys, kD)
  T* s_v = s_k + kR * kD;                   // (kR keys, kD)
  T* s_qdo = s_v + kR * kD;                 // kS stages of [Q (kC queries, kD), dO (kC queries, kD)]
  T* s_pt = s_qdo + kS * 2 * kTile;         // Pᵀ (kR keys, kC queries), layout LS
  T* s_ds = s_pt + kR * kC;                 // dSᵀ (kR keys, kC queries), layout LS

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const AttnLaneAddr<L> la = lane_addr_a<L>(), lb = lane_addr_b<L>();
  const AttnLaneAddr<LS> la_s = lane_addr_a<LS>();
  const int64_t bhk = blockIdx.x, b = bhk / f.heads_kv, hk = bhk % f.heads_kv;
  // Positions in 32 bits, as in the forward (lengths < 2^22, windows clamped to 2^24).
  const int n0 = int(blockIdx.y) * kR, sq = int(f.seqlen_q), sk = int(f.seqlen_k), shift = sk - sq;
  const int wl = int(f.window_left), wr = int(f.window_right);
  const int group = int(f.heads_q / f.heads_kv);
  const float scale_log2 = f.scale * 1.44269504088896340736f;
  // This warp's slab of keys (scores, dK, dV), half of a step's queries (scores) and half of D (dK, dV).
  const int slab = (warp % 4) * K::kSlabKeys, qh = (warp / 4) * K::kHalfQ, dh = (warp / 4) * K::kHalfD;
  const int k0 = n0 + slab;

  load_kv_async<K>(p, s_k, s_v, b, hk, n0);

  int mb_lo, mb_hi;  // the query tiles that can see any of these keys
  visible_query_tiles<kC, int>(n0, (n0 + kR < sk ? n0 + kR : sk) - 1, sq, shift, wl, wr, mb_lo, mb_hi);

  float dk[kM][K::kHalfDTiles][4], dv[kM][K::kHalfDTiles][4];  // keys k0 .. k0 + 31, columns dh ..
#pragma unroll
  for (int m = 0; m < kM; ++m)
#pragma unroll
    for (int d = 0; d < K::kHalfDTiles; ++d)
#pragma unroll
      for (int c = 0; c < 4; ++c) dk[m][d][c] = dv[m][d][c] = 0.f;

  // Steps (query head h of the group, query tile mb), h-major, with the dkdv kernel's schedule.
  static_assert(kS == 2, "one (h, mb) counter: the load runs exactly one step ahead");
  const int n_steps = group * (mb_hi - mb_lo);
  int h = int(hk) * group, mb = mb_lo;
  auto load_step = [&](int i) { load_q_do_async<K>(p, s_qdo + (i % kS) * 2 * kTile, b, h, int64_t(mb) * kC); };
  if (n_steps > 0) load_step(0);
  cp_async_commit();

  for (int i = 0; i < n_steps; ++i) {
    cp_async_wait<kS - 2>();
    __syncthreads();  // also: every warp is done with the last step's Pᵀ and dSᵀ tiles
    const int m0 = mb * kC;  // step i
    const int64_t bh = b * f.heads_q + h;
    const float* lse = f.lse + bh * sq;
    const float* dl = delta + bh * sq;
    if (++mb == mb_hi) mb = mb_lo, ++h;  // step i + 1
    if (i + 1 < n_steps) load_step(i + 1);
    cp_async_commit();
    const T* s_q = s_qdo + (i % kS) * 2 * kTile;
    const T* s_do = s_q + kTile;

    // This warp's score block: keys k0 + r (r = 16m + g + 8(c / 2)), queries q0 + col
    // (col = 8j + 2t + c % 2). A block the mask or a sequence end cuts through has its hidden
    // elements zeroed in Pᵀ and dSᵀ (queries past the end also have lse +inf, so P = 0).
    const int q0 = m0 + qh;
    const bool cut = q0 + K::kHalfQ > sq || k0 + K::kSlabKeys > sk ||
                     (wr >= 0 && k0 + K::kSlabKeys - 1 > q0 + shift + wr) ||
                     (wl >= 0 && k0 < q0 + K::kHalfQ - 1 + shift - wl);
    const auto hidden = [&](int m, int j, int c) {  // visible iff -wl <= key - query - shift <= wr
      const int r = 16 * m + g + 8 * (c / 2), col = j * 8 + 2 * t + c % 2, off = k0 - q0 - shift + r - col;
      return col >= sq - q0 || r >= sk - k0 || (wr >= 0 && off > wr) || (wl >= 0 && off < -wl);
    };
    // Stores a (keys x queries) score block as 16-bit values into its shared tile (one
    // conflict-free wavefront per store: the 8 rows g land in 8 distinct 16-byte bank groups).
    const auto store_scores = [&](T* tile, const float (&x)[kM][kN][4]) {
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kN; ++j)
#pragma unroll
          for (int rh = 0; rh < 2; ++rh)
            *reinterpret_cast<uint32_t*>(tile + LS::offset(slab + 16 * m + g + 8 * rh, qh + j * 8) + 2 * t) =
                pack2<T>(x[m][j][2 * rh], x[m][j][2 * rh + 1]);
    };

    // Pᵀ = exp(Sᵀ·scale − lse[query]) and dSᵀ = Pᵀ ∘ (dPᵀ − delta[query]), P in fp32.
    float pt[kM][kN][4], dst[kM][kN][4];
    slab_scores<K>(pt, smem_addr(s_k), smem_addr(s_q), la, lb, slab, qh);
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int c2 = 0; c2 < 2; ++c2) {
        const int query = q0 + j * 8 + 2 * t + c2;
        const float l = query < sq ? lse[query] : INFINITY;
#pragma unroll
        for (int m = 0; m < kM; ++m)
#pragma unroll
          for (int c = c2; c < 4; c += 2) pt[m][j][c] = exp2f(pt[m][j][c] * scale_log2 - l * 1.44269504088896340736f);
      }
    // Hidden elements: the 128-query kernels zero P here, before dP (dS is then 0·x, a zero
    // too), the 64-query ones P and dS together below: what ptxas spills least for each (d = 64:
    // 56-68 bytes -> 0-16 early; d = 96, 128: 0-4 late, 16-44 early).
    constexpr bool kMaskEarly = kC == 128;
    const auto zero_hidden = [&](bool ds_too) {
#pragma unroll
      for (int m = 0; m < kM; ++m)
#pragma unroll
        for (int j = 0; j < kN; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (hidden(m, j, c)) {
              pt[m][j][c] = 0.f;
              if (ds_too) dst[m][j][c] = 0.f;
            }
    };
    if (kMaskEarly && cut) zero_hidden(false);
    slab_scores<K>(dst, smem_addr(s_v), smem_addr(s_do), la, lb, slab, qh);
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int c2 = 0; c2 < 2; ++c2) {
        const int query = q0 + j * 8 + 2 * t + c2;
        const float dlq = query < sq ? dl[query] : 0.f;
#pragma unroll
        for (int m = 0; m < kM; ++m)
#pragma unroll
          for (int c = c2; c < 4; c += 2) dst[m][j][c] = pt[m][j][c] * (dst[m][j][c] - dlq);
      }
    if (!kMaskEarly && cut) zero_hidden(true);
    store_scores(s_pt, pt);
    store_scores(s_ds, dst);
    __syncthreads();  // the Pᵀ and dSᵀ tiles are whole

    // This warp's block of the step's dQ: kQRows queries from dq0, kQCols columns from c0, over
    // the CTA's kR keys. A = dS from the dSᵀ tile: ldmatrix.trans of its [key][query]
    // blocks gives, in the order (b_lo[0], b_lo[1], b_hi[0], b_hi[1]), the 8x8 blocks (queries
    // 0-7, keys 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15): A's registers are 0, 2, 1, 3 of it.
    // Before dK and dV, so that the atomics drain while those products run.
    const int dq0 = (warp / K::kQColBlocks) * K::kQRows, c0 = (warp % K::kQColBlocks) * K::kQCols;
    float acc[K::kQRows / 16][K::kQCols / 8][4];
#pragma unroll
    for (int mi = 0; mi < K::kQRows / 16; ++mi)
#pragma unroll
      for (int n = 0; n < K::kQCols / 8; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[mi][n][c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kR; kk += 16) {
      uint32_t a[K::kQRows / 16][4];
#pragma unroll
      for (int mi = 0; mi < K::kQRows / 16; ++mi) {
        uint32_t lo[2], hi[2];
        ld_b_kn<LS>(lo, hi, smem_addr(s_ds), la_s, kk, dq0 + 16 * mi);
        a[mi][0] = lo[0], a[mi][1] = hi[0], a[mi][2] = lo[1], a[mi][3] = hi[1];
      }
#pragma unroll
      for (int n = 0; n < K::kQCols / 8; n += 2) {
        uint32_t b_lo[2], b_hi[2];
        ld_b_kn<L>(b_lo, b_hi, smem_addr(s_k), la, kk, c0 + n * 8);
#pragma unroll
        for (int mi = 0; mi < K::kQRows / 16; ++mi) {
          mma_m16n8k16<T>(acc[mi][n], a[mi], b_lo);
          mma_m16n8k16<T>(acc[mi][n + 1], a[mi], b_hi);
        }
      }
    }
    // Each lane adds its column pairs (2t, 2t + 1) of rows g and g + 8: one float2 atomic each
    // on sm_90 (8-byte aligned: head_dim and col even, the accumulator 16-byte aligned), which
    // halves the atomic requests to L2; two scalar ones below sm_90.
    float* dq_row = dq_accum + bh * sq * f.head_dim;
#pragma unroll
    for (int mi = 0; mi < K::kQRows / 16; ++mi)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh) {
        const int query = m0 + dq0 + 16 * mi + g + 8 * rh;
        if (query >= sq) continue;
#pragma unroll
        for (int n = 0; n < K::kQCols / 8; ++n) {
          const int col = c0 + n * 8 + 2 * t;
          if (col >= f.head_dim) continue;
          float* dst_q = dq_row + int64_t(query) * f.head_dim + col;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float2*>(dst_q), make_float2(acc[mi][n][2 * rh], acc[mi][n][2 * rh + 1]));
#else
          atomicAdd(dst_q, acc[mi][n][2 * rh]);
          atomicAdd(dst_q + 1, acc[mi][n][2 * rh + 1]);
#endif
        }
      }

    // dV += Pᵀ·dO and dK += dSᵀ·Q for this warp's keys and half of D, A from the shared tiles.
#pragma unroll
    for (int kc = 0; kc < kC / 16; ++kc) {
      uint32_t a_p[kM][4], a_ds[kM][4];
#pragma unroll
      for (int m = 0; m < kM; ++m) {
        ld_a<LS>(a_p[m], smem_addr(s_pt), la_s, slab + 16 * m, kc * 16);
        ld_a<LS>(a_ds[m], smem_addr(s_ds), la_s, slab + 16 * m, kc * 16);
      }
      accumulate_dkdv<K>(dk, dv, a_p, a_ds, smem_addr(s_q), smem_addr(s_do), la, kc, dh);
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int m = 0; m < kM; ++m) store_dkdv<T>(p, dk[m], dv[m], b, hk, k0 + 16 * m, dh);
}

// dq = scale · dq_accum in q's dtype and dq's strides, one warp per query row (the dot kernel's
// shape); dq_accum is (B, Hq, Sq, head_dim) fp32, contiguous.
template <typename T>
__global__ void __launch_bounds__(256) attention_bwd_dq_convert_kernel(const AttentionBwdParams p, const float* dq_accum) {
  const AttentionFwdParams& f = p.fwd;
  const int64_t rows = f.batch * f.heads_q * f.seqlen_q;
  const int lane = threadIdx.x % 32;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    const int64_t i = r % f.seqlen_q, bh = r / f.seqlen_q, b = bh / f.heads_q, h = bh % f.heads_q;
    T* dst = static_cast<T*>(p.dq) + b * p.dq_s.batch + h * p.dq_s.head + i * p.dq_s.row;
    const float* src = dq_accum + r * f.head_dim;
    for (int64_t c = 2 * lane; c < f.head_dim; c += 64) {  // head_dim is even (a multiple of 8)
      const float2 v = *reinterpret_cast<const float2*>(src + c);
      *reinterpret_cast<uint32_t*>(dst + c) = pack2<T>(v.x * f.scale, v.y * f.scale);
    }
  }
}

}  // namespace mmm
