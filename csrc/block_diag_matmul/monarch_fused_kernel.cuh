// The fused Monarch forward on CUDA (fp16/bf16, sm_80+): one CTA per kBT tokens reads its x rows
// and writes its y rows once; the intermediate lives in shared memory. monarch_fused.h states
// the semantics, the index map and the plan (tokens per CTA, chunk J, shared memory).
//
// One CTA = 4 warps. Its work is a flat sequence of steps, each one K-slice (<= 64) of one small
// GEMM (or of U of them) whose B operand (weights) streams through shared memory:
//   chunk j0 = 0, J, 2J, ... (stage-2 blocks j0 .. j0+J-1):
//     stage 1, for every group of U units u (w1 block b = block(j0, u)), K-slices of p:
//           (kBT, n1) += x[:, b*p + ks..] (kBT, 64) * w1[b, w1_row(j0, e), ks..]^T (n1, 64)
//       last slice: accumulators -> z[m][z_col(u, e)] (the permutation: a store address)
//       (U = plan.units: 1, or 2 / 4 when n1 <= 32 / 16, so that every warp has a column tile;
//       the group's units sit side by side in the step's buffers, 4 / U warps on each)
//     stage 2, for every group of V blocks jj < J (V = plan.blocks: 2 / 4 when s <= 32 / 16, as
//     U), K-slices of r:       (kBT, s) += z[:, jj*r + ks..] * w2[j0+jj][:, ks..]^T
//       last slice: accumulators -> ys[m][t2*8 + jj%8]; after every 8th jj, ys -> y with 16-byte
//       stores: y[t, t2*l + j0 + 8g .. +8] is contiguous (monarch_y_col). Inside each 16-byte
//       group the four 32-bit words are XOR-permuted by (t2 / 2) % 4 (ys_slot): the 4 lanes of an
//       accumulator store that share a bank group (one t2 pair each) then hit 4 different banks,
//       where the same word of each group was a 4-way bank conflict; the flush undoes it.
//   z is stored transposed, zT[zc][m] (zt_slot): the 4 lanes of a row of an accumulator store
//   hold columns e two stage-2 blocks apart, 2r z columns, which in [m][zc] order all hit one
//   word of one bank group (4-way conflicts). Transposed, each lane quad's 8 lanes store 16
//   contiguous bytes, the quads in z rows whose 16-byte chunks an XOR by (jj / 2) sends to
//   distinct bank groups (kBT = 32; 2 groups, a 2-way conflict, for kBT = 16), and stage 2 reads
//   A with ldmatrix .trans, 8 consecutive z rows in 8 distinct groups by the XOR's (zc / 2) term.
// Pipeline (S = kMonarchStages = 3 buffers, cp.async), the step sequence running on across b, jj
// and chunks so the next weights are always in flight:
//   prologue: steps 0 .. S-2 into buffers 0 .. S-2, one commit group each
//   iteration g: wait_group S-2 (step g's copies landed, this thread) -> __syncthreads (everyone's;
//     and every warp is past step g-1, so its buffer (g-1)%S == (g+S-1)%S is free and every z / ys
//     store of earlier steps is visible) -> issue step g+S-1 into that buffer, commit (empty past
//     the end) -> mma on buffer g%S -> last K-slice: store the GEMM to z or ys (ys: a second
//     barrier, then the 16-byte flush to y).
// x rows past the last token are zero-filled by cp.async (src-size 0) and never stored.
// Warps split each step's output columns in 16-wide tiles (warp w: tiles w, w+4, w+8, w+12; at
// most 256 columns; with G = U or V GEMMs a step, GEMM w / (4/G), tiles w % (4/G) + (4/G)*i) and
// all kBT rows: accumulators kMT x 4 x 2 x 4 floats per thread.
#pragma once
#include "block_diag_matmul/monarch_fused.h"
#include "core/cp_async.cuh"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

namespace mmm {

template <int kMT_>
struct MonarchFusedTile {
  static constexpr int kMT = kMT_;            // m16 tiles per CTA
  static constexpr int kBT = 16 * kMT;        // tokens per CTA
  static constexpr int kThreads = kMonarchThreads, kWarps = kThreads / 32;
  static constexpr int kKS = kMonarchKSlice, kKP = kMonarchKPitch, kG = kMonarchYGroup;
  static constexpr int kTilesPerWarp = kMonarchMaxBlock / 16 / kWarps;  // 16-wide column tiles
  static_assert(kWarps == 4 && kTilesPerWarp == 4, "4 warps cover 256 output columns in 16-wide tiles");
  static_assert(kKS % 16 == 0 && (kKP * 2) % 128 == 16, "pitch 16 mod 128 bytes: conflict-free ldmatrix");
  static_assert(kG * 2 == 16, "an output group is one 16-byte store (and ys_slot permutes its 4 words)");
};

// Where z element (zc, m) lies in zT (kC = kBT / 8 chunks of 8 tokens per row, no padding); jj =
// zc / r, the stage-2 block of z column zc (the header comment says why this swizzle).
template <int kC>
__device__ __forceinline__ int zt_slot(int zc, int jj, int m) {
  static_assert(kC == 2 || kC == 4, "16 or 32 tokens per CTA");
  const int sw = kC == 4 ? ((zc >> 1) ^ (jj >> 1)) & 3 : ((zc >> 2) ^ (jj >> 1)) & 1;
  return zc * (8 * kC) + 8 * ((m >> 3) ^ sw) + (m & 7);
}

// Where stage-2 output t2 of block jj (jj % 8 = jg) lies in its ys row (see the header comment).
__device__ __forceinline__ int ys_slot(int t2, int jg) { return t2 * 8 + (jg ^ (((t2 >> 1) & 3) << 1)); }
// A 16-byte ys group read back in jj order: word w came from word w ^ ((t2 / 2) % 4).
__device__ __forceinline__ uint4 ys_unpermute(uint4 v, int t2) {
  const int x = (t2 >> 1) & 3;
  if (x & 1) v = make_uint4(v.y, v.x, v.w, v.z);
  if (x & 2) v = make_uint4(v.z, v.w, v.x, v.y);
  return v;
}

// Min blocks 1: left to its own heuristic, ptxas capped this kernel at 128 registers and spilled
// on sm_90; it needs ~145 (the accumulators alone are kMT x 32 floats), and one CTA per SM is
// what the big shapes get anyway (their shared memory).
template <typename T, int kMT>
__global__ void __launch_bounds__(kMonarchThreads, 1) monarch_fused_kernel(const MonarchFused f, const int J, const int U,
                                                                          const int V) {
  using Tile = MonarchFusedTile<kMT>;
  constexpr int kBT = Tile::kBT, kKS = Tile::kKS, kKP = Tile::kKP, kG = Tile::kG, kTW = Tile::kTilesPerWarp;
  const int k = int(f.k), q = int(f.q), p = int(f.p), l = int(f.l), s = int(f.s), r = int(f.r);
  const MonarchIndex<int> ix(k, q, l, r, J);
  const int n1 = ix.n1(), nw = max(U * n1, V * s);
  const int yp = kG * s + 8;  // row pitch of ys (16 mod 128 bytes)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kS = kMonarchStages;
  T* xs = reinterpret_cast<T*>(smem_raw);  // (kS, U, kBT, kKP): x K-slices
  T* ws = xs + kS * U * kBT * kKP;         // (kS, nw, kKP): weight K-slices, [n][k]; GEMM i's at rows i*n1 / i*s
  T* zs = ws + kS * nw * kKP;              // (J*r, kBT): the chunk's permuted intermediate, transposed
  T* ys = zs + J * r * kBT;                // (kBT, yp): 8 stage-2 blocks' outputs, [m][t2][jj%8]

  const T* X = static_cast<const T*>(f.x);
  const T* W1 = static_cast<const T*>(f.w1);
  const T* W2 = static_cast<const T*>(f.w2);
  T* Y = static_cast<T*>(f.y);
  const int64_t tok0 = int64_t(blockIdx.x) * kBT;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  // The step sequence: per chunk, ceil(units / U)*P1 stage-1 steps then (J / V)*P2 stage-2 steps.
  const int P1 = (p + kKS - 1) / kKS, P2 = (r + kKS - 1) / kKS, units = ix.units();
  const int S1 = (units + U - 1) / U * P1, S = S1 + J / V * P2, G = (l / J) * S;
  struct Step {
    int j0, stage, blk, kc, ks, len;  // blk: group of units blk*U.. (stage 1) or blocks jj = blk*V.. (stage 2)
  };
  const auto decode = [&](int g) {
    Step st;
    st.j0 = (g / S) * J;
    int i = g % S;
    st.stage = i < S1 ? 1 : 2;
    if (st.stage == 2) i -= S1;
    const int P = st.stage == 1 ? P1 : P2;
    st.blk = i / P, st.kc = i % P, st.ks = st.kc * kKS;
    st.len = min(kKS, (st.stage == 1 ? p : r) - st.ks);  // a multiple of 16
    return st;
  };

  const auto load = [&](int g, int buf) {
    const Step st = decode(g);
    const int cpr = st.len / 8;  // 16-byte chunks per row
    T* wdst = ws + buf * nw * kKP;
    if (st.stage == 1) {  // the group's nu units, each kBT x rows and n1 w1 rows, side by side
      T* xdst = xs + buf * U * kBT * kKP;
      const int u0 = st.blk * U, nu = min(U, units - u0);
      for (int i = tid; i < nu * kBT * cpr; i += Tile::kThreads) {
        int um, ch;
        padded_tile_chunk(i, cpr, nu * kBT, um, ch);  // conflict-free shared stores
        const int m = um % kBT;
        const int64_t b = ix.block(st.j0, u0 + um / kBT);
        const bool ok = tok0 + m < f.tokens;
        // Rows past the end: zero-filled, and the source clamped to a valid row (tok0's).
        const T* src = X + (ok ? tok0 + m : tok0) * f.x_rs + b * p + st.ks + ch * 8;
        cp_async_16(xdst + um * kKP + ch * 8, src, ok);
      }
      for (int i = tid; i < nu * n1 * cpr; i += Tile::kThreads) {
        int ue, ch;
        padded_tile_chunk(i, cpr, nu * n1, ue, ch);
        const int64_t row = ix.block(st.j0, u0 + ue / n1) * q + ix.w1_row(st.j0, ue % n1);
        cp_async_16(wdst + ue * kKP + ch * 8, W1 + row * p + st.ks + ch * 8, true);
      }
    } else {  // the group's V blocks of w2, s rows each, side by side
      for (int i = tid; i < V * s * cpr; i += Tile::kThreads) {
        int vt, ch;
        padded_tile_chunk(i, cpr, V * s, vt, ch);
        const int64_t row = int64_t(st.j0 + st.blk * V + vt / s) * s + vt % s;
        cp_async_16(wdst + vt * kKP + ch * 8, W2 + row * r + st.ks + ch * 8, true);
      }
    }
  };

  float acc[kMT][kTW][2][4];
  const auto clear = [&]() {
#pragma unroll
    for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
      for (int i = 0; i < kTW; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[mi][i][h][c] = 0.f;
  };
  clear();
  const int gq = lane / 4, tq = lane % 4;  // c[c] of an m16n8 tile: row gq + 8*(c/2), col 2*tq + c%2

#pragma unroll
  for (int st = 0; st < kS - 1; ++st) {
    if (st < G) load(st, st);
    cp_async_commit();  // possibly empty: every thread commits the same sequence of groups
  }
#pragma unroll 1
  for (int g = 0; g < G; ++g) {
    cp_async_wait<kS - 2>();
    __syncthreads();  // step g's slices and earlier z / ys stores visible; buffer (g-1)%kS free
    if (g + kS - 1 < G) load(g + kS - 1, (g + kS - 1) % kS);
    cp_async_commit();

    const Step st = decode(g);
    const int buf = g % kS;
    const int ntiles = (st.stage == 1 ? n1 : s) / 16;
    // This warp's share: GEMM slot us of the step's group (unit u or block jj) and its column
    // tiles wt + wpu*i.
    const int wpu = Tile::kWarps / (st.stage == 1 ? U : V), us = warp / wpu, wt = warp % wpu;
    const int u = st.blk * U + us, jj = st.blk * V + us;
    const T* x_tile = xs + (buf * U + us) * kBT * kKP;
    const T* b_tile = ws + (buf * nw + us * (st.stage == 1 ? n1 : s)) * kKP;
    // A warp with no column tile in this step (fewer than 4 / U or 4 / V tiles, or a group short
    // of U units at the end of a chunk) skips it: its A fragments would be ldmatrix traffic for
    // no MMA.
    const bool active = wt < ntiles && (st.stage == 2 || u < units);
    for (int kk = 0; kk < (active ? st.len : 0); kk += 16) {
      uint32_t a[kMT][4];
      if (st.stage == 1) {
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) load_a_frag(a[mi], x_tile, kKP, mi * 16, kk);
      } else {  // A(m, k) = zT[zc][m]: ldmatrix .trans of matrix j at z rows zc0 + 8*(j/2) + lane%8,
                // tokens mi*16 + 8*(j%2) (core/mma.cuh's A register order: j%2 rows 8-15, j/2 k 8-15)
        const int j = lane / 8, zc = jj * r + st.ks + kk + 8 * (j / 2) + lane % 8;
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi)
          ldmatrix_x4_trans(a[mi], zs + zt_slot<2 * kMT>(zc, jj, mi * 16 + 8 * (j % 2)));
      }
#pragma unroll
      for (int i = 0; i < kTW; ++i) {
        const int nt = wt + wpu * i;
        if (nt < ntiles) {  // warp-uniform
          uint32_t b_lo[2], b_hi[2];
          load_b_frags(b_lo, b_hi, b_tile, kKP, nt * 16, kk);
#pragma unroll
          for (int mi = 0; mi < kMT; ++mi) {
            mma_m16n8k16<T>(acc[mi][i][0], a[mi], b_lo);
            mma_m16n8k16<T>(acc[mi][i][1], a[mi], b_hi);
          }
        }
      }
    }

    if (st.kc == (st.stage == 1 ? P1 : P2) - 1) {  // the step's GEMM is complete: store it
#pragma unroll
      for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
        for (int i = 0; i < kTW; ++i) {
          const int nt = wt + wpu * i;
          if (active && nt < ntiles) {
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int c = 0; c < 4; ++c) {
                const int m = mi * 16 + gq + 8 * (c / 2), col = nt * 16 + h * 8 + 2 * tq + c % 2;
                const T v = from_f<T>(acc[mi][i][h][c]);
                if (st.stage == 1) {  // kBT = 16: rows of 32 bytes leave the 4 quads 2 bank groups
                  const int zc = ix.z_col(u, col), jj = ix.z_block(u, col);
                  zs[zt_slot<2 * kMT>(zc, jj, m)] = v;  // known bank conflict at kBT = 16: 2-way (above)
                } else {
                  ys[m * yp + ys_slot(col, jj % kG)] = v;
                }
              }
          }
        }
      clear();
      const int last_jj = st.blk * V + V - 1;  // of the step (V divides kG)
      if (st.stage == 2 && last_jj % kG == kG - 1) {  // CTA-uniform
        __syncthreads();  // every warp's ys columns written
        const int jg = last_jj - (kG - 1);
        for (int i = tid; i < kBT * s; i += Tile::kThreads) {
          const int m = i / s, t2 = i % s;
          if (tok0 + m < f.tokens)
            *reinterpret_cast<uint4*>(Y + (tok0 + m) * f.y_rs + monarch_y_col(t2, jg, st.j0, l)) =
                ys_unpermute(*reinterpret_cast<const uint4*>(ys + m * yp + t2 * kG), t2);
        }
      }
    }
  }
}

}  // namespace mmm
