// Block GEMM on CUDA: C[b][i][j] = sum_p A[b][i][p] * B[b][p][j] with arbitrary strides.
//
//   block_gemm_mma_kernel   fp16/bf16: 128x64 C tiles, 4 warps of 64x32, K-tiles of 32 through
//                           a 3-stage cp.async pipeline, ldmatrix + mma.sync m16n8k16, fp32
//                           accumulators; optional split-K with block_gemm_split_reduce_kernel.
//   block_gemm_kernel       fp32 (and MMM_DISABLE_TENSOR_CORES=1): 64x64 tiles, a 4x4 sub-tile
//                           per thread, FMA in fp32.
// Both stage any strides: tile loads walk whichever tile dimension has unit stride, so the
// permuted Monarch views still load coalesced. The tensor-core kernel stages each operand with
// its contiguous dimension innermost and loads it with 16-byte cp.async through a 3-stage
// pipeline where the strides allow (element loads otherwise), and splits long reductions
// (dweight over all tokens) across CTAs with an ordered fp32 reduction: every result is
// deterministic.
#pragma once
#include "block_diag_matmul/params.h"
#include "core/cp_async.cuh"
#include "core/cuda_utils.cuh"
#include "core/mma.cuh"

namespace mmm {

struct BlockGemmTile {
  static constexpr int kM = 64, kN = 64, kK = 16, kThreads = 256;
  static constexpr int kPerThread = 4;  // (4, 4) outputs per thread
  static_assert(kM / kPerThread * (kN / kPerThread) == kThreads, "one 4x4 sub-tile per thread");
};

// Three CTAs per SM (<= 85 registers): ptxas takes 80 without spills, where unbounded it took
// 90-105 for the batched tile loads and fit two.
template <typename T>
__global__ void __launch_bounds__(BlockGemmTile::kThreads, 3) block_gemm_kernel(const BlockGemm g) {
  using Tile = BlockGemmTile;
  constexpr int kM = Tile::kM, kN = Tile::kN, kK = Tile::kK, kR = Tile::kPerThread;
  // k-major, so a thread's 4 rows (columns) are one conflict-free 16-byte load.
  __shared__ __align__(16) float a_tile[kK][kM + 4];  // (kK, kM)
  __shared__ __align__(16) float b_tile[kK][kN + 4];  // (kK, kN)
  static_assert(kR == 4, "a thread's row of its sub-tile is one float4");
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
        // k contiguous (x and w in the forward): the stores transpose, 2 rows of 16 k per warp, a
        // 2-way bank conflict on 4 + 4 stores per thread against its 256 FMAs. (A warp of 8 k by
        // 4 rows has none, but its index math spills in the fp16/bf16 variants.)
        // All of a thread's loads before its stores: a shared-memory store right behind its
        // load would stall the warp until the load returns (in-order issue).
        constexpr int kPer = kM * kK / Tile::kThreads;
        static_assert(kPer * Tile::kThreads == kM * kK && kM == kN, "whole tiles per thread");
        float av[kPer], bv[kPer];
#pragma unroll
        for (int q = 0; q < kPer; ++q) {
          const int e = tid + q * Tile::kThreads;
          const int mm = a_k_unit ? e / kK : e % kM, ka = a_k_unit ? e % kK : e / kM;
          const int nn = b_k_unit ? e / kK : e % kN, kb = b_k_unit ? e % kK : e / kN;
          av[q] = i0 + mm < g.m && p0 + ka < g.k ? to_f(A[(i0 + mm) * g.a_ms + (p0 + ka) * g.a_ks]) : 0.f;
          bv[q] = p0 + kb < g.k && j0 + nn < g.n ? to_f(B[(p0 + kb) * g.b_ks + (j0 + nn) * g.b_ns]) : 0.f;
        }
#pragma unroll
        for (int q = 0; q < kPer; ++q) {
          const int e = tid + q * Tile::kThreads;
          a_tile[a_k_unit ? e % kK : e / kM][a_k_unit ? e / kK : e % kM] = av[q];  // known bank conflict (above)
          b_tile[b_k_unit ? e % kK : e / kN][b_k_unit ? e / kK : e % kN] = bv[q];  // known bank conflict (above)
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kK; ++kk) {
          const float4 a4 = *reinterpret_cast<const float4*>(&a_tile[kk][ty * kR]);
          const float4 b4 = *reinterpret_cast<const float4*>(&b_tile[kk][tx * kR]);
          const float a[kR] = {a4.x, a4.y, a4.z, a4.w}, b[kR] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
          for (int r = 0; r < kR; ++r)
#pragma unroll
            for (int c = 0; c < kR; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
        }
        __syncthreads();  // the tiles are overwritten next
      }
      // A thread's 4 columns of a row as one store where C's rows are contiguous and aligned.
      const bool quads = g.c_ns == 1 && g.c_ms % 4 == 0 && reinterpret_cast<uintptr_t>(C) % (4 * sizeof(T)) == 0;
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const int64_t i = i0 + ty * kR + r, j = j0 + tx * kR;
        if (i >= g.m) continue;
        if (quads && j + kR <= g.n) {
          if constexpr (std::is_same_v<T, float>) {
            *reinterpret_cast<float4*>(C + i * g.c_ms + j) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
          } else {
            uint2 packed;
            packed.x = pack2<T>(acc[r][0], acc[r][1]);
            packed.y = pack2<T>(acc[r][2], acc[r][3]);
            *reinterpret_cast<uint2*>(C + i * g.c_ms + j) = packed;
          }
        } else {
#pragma unroll
          for (int c = 0; c < kR; ++c)
            if (j + c < g.n) C[i * g.c_ms + (j + c) * g.c_ns] = from_f<T>(acc[r][c]);
        }
      }
    }
  }
}

struct BlockGemmMmaTile {
  static constexpr int kM = 128, kN = 64, kK = 32, kThreads = 128, kStages = 3;
  static constexpr int kWarpsN = 2, kWarpM = 64, kWarpN = 32;  // 2x2 warps
  static constexpr int kMi = kWarpM / 16, kNj = kWarpN / 8;   // m16 and n8 tiles per warp
  // Operand tiles are staged with whichever dimension is contiguous in memory innermost, so
  // loads are 16-byte cp.async chunks: [rows][k] (k contiguous) or [k][rows] (rows contiguous).
  // Every pitch is 16 mod 128 bytes (or 80-byte rows: 8 rows hit 8 distinct 16-byte bank
  // groups), so ldmatrix (.trans) is conflict-free.
  static constexpr int kPitchK = kK + 8;  // [rows][k]: 80-byte rows
  static constexpr int kPitchM = kM + 8;  // A as [k][m]: 272-byte rows
  static constexpr int kPitchN = kN + 8;  // B as [k][n]: 144-byte rows
  static constexpr int kAElems = kM * kPitchK > kK * kPitchM ? kM * kPitchK : kK * kPitchM;
  static constexpr int kBElems = kN * kPitchK > kK * kPitchN ? kN * kPitchK : kK * kPitchN;
  static_assert(kM == 2 * kWarpM && kN == kWarpsN * kWarpN && kK % 16 == 0 && kNj % 2 == 0);
  static_assert(kM % 8 == 0 && kN % 8 == 0 && kK % 8 == 0, "16-byte chunks");
  static_assert(kStages * (kAElems + kBElems) * 2 <= 48 * 1024, "static shared memory");
};

// cp.async of `bytes` (0..16) valid bytes, the rest of the 16 zero-filled (PTX src-size).
__device__ __forceinline__ void cp_async_16_bytes(void* smem, const void* gmem, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(bytes));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// A fragment of the 16x16 tile at (m0, k0) of an A tile stored [k][m] (pitch elements per k
// row): ldmatrix .trans of matrix j = lane/8 at k rows k0 + lane%8 + 8*(j/2), m columns
// m0 + 8*(j%2); lane then holds A(m0 + 8*(j%2) + lane/4, k0 + 8*(j/2) + 2*(lane%4) ..+1) in
// register j = a0..a3 of the m16n8k16 A layout.
template <typename T>
__device__ __forceinline__ void load_a_frag_km(uint32_t (&a)[4], const T* tile, int pitch, int m0, int k0) {
  const int l = threadIdx.x % 32, j = l / 8;
  ldmatrix_x4_trans(a, tile + (k0 + l % 8 + 8 * (j / 2)) * pitch + m0 + 8 * (j % 2));
}

// Stage the (kRows, kK) slice of an operand whose element (row, p) is at src[row*rs + p*ks]
// (zero outside row < R, p < K) into smem: [row][k] (pitch kPitchK) or, kRowsInner, [k][row]
// (pitch kRows + 8). vec: the contiguous dimension has unit stride and every 8-element chunk is
// 16-byte aligned, so 16-byte cp.async with the ragged end zero-filled; otherwise element by
// element through registers (st.shared, visible after the pipeline's next barrier too).
template <typename T, int kRows, bool kRowsInner>
__device__ __forceinline__ void stage_operand(T* dst, const T* src, int64_t rs, int64_t ks, int64_t r0, int64_t R,
                                              int64_t p0, int64_t K, bool vec) {
  using Tile = BlockGemmMmaTile;
  constexpr int kK = Tile::kK, kPitch = kRowsInner ? kRows + 8 : Tile::kPitchK;
  const int tid = threadIdx.x;
  if (vec) {
    constexpr int kInner = kRowsInner ? kRows : kK, kOuter = kRowsInner ? kK : kRows, kCh = kInner / 8;
    const int64_t i0 = kRowsInner ? r0 : p0, o0 = kRowsInner ? p0 : r0;
    const int64_t in_n = kRowsInner ? R : K, out_n = kRowsInner ? K : R;
    const int64_t in_s = kRowsInner ? rs : ks, out_s = kRowsInner ? ks : rs;  // in_s == 1
#pragma unroll 1
    for (int c = tid; c < kOuter * kCh; c += Tile::kThreads) {
      int o, ch;
      padded_tile_chunk(c, kCh, kOuter, o, ch);  // conflict-free shared stores
      const int ic = ch * 8;
      const int64_t oi = o0 + o, ii = i0 + ic;
      const int64_t valid = oi < out_n && ii < in_n ? (in_n - ii < 8 ? in_n - ii : 8) : 0;
      const T* g = valid > 0 ? src + oi * out_s + ii * in_s : src;  // never read when 0; kept valid
      cp_async_16_bytes(dst + o * kPitch + ic, g, int(valid) * 2);
    }
  } else {
    const T zero = from_f<T>(0.f);
    const bool k_unit = ks == 1;  // walk the unit-stride dimension across threads: coalesced
#pragma unroll 1
    for (int e = tid; e < kRows * kK; e += Tile::kThreads) {
      const int rr = k_unit ? e / kK : e % kRows, kk = k_unit ? e % kK : e / kRows;
      const int64_t row = r0 + rr, p = p0 + kk;
      const T v = row < R && p < K ? src[row * rs + p * ks] : zero;  // known uncoalesced: the fallback
      // Staging transposed (k_unit with kRowsInner, or the reverse), lanes hit one bank 2-4 ways:
      // the path for strides no 16-byte copy fits, which the aligned shapes never take.
      dst[kRowsInner ? kk * kPitch + rr : rr * kPitch + kk] = v;  // known bank conflict (above)
    }
  }
}

// Tensor-core block GEMM (fp16/bf16, fp32 accumulation): 128x64 C tiles, 4 warps of 64x32,
// ldmatrix + mma.sync m16n8k16, a kStages-deep cp.async pipeline over K-tiles of 32.
// kAkm / kBkn: A staged [k][m] / B staged [k][n] (their unit stride is along m / n: the permuted
// Monarch views and the backward's transposes), read with ldmatrix .trans.
//
// Stage schedule (S = kStages = 3, KT K-tiles in this CTA's reduction range):
//   prologue: load tiles 0 .. S-2 into stages 0 .. S-2, one commit group each
//   iteration kt = 0 .. KT-1:
//     wait_group S-2   -> this thread's copies of tile kt have landed
//     __syncthreads    -> everyone's have; and every warp is done with tile kt-1's stage
//     load tile kt+S-1 into stage (kt+S-1) % S == (kt-1) % S; commit (an empty group past KT)
//     mma over stage kt % S        (tiles kt+1 .. kt+S-1 are in flight meanwhile)
//   after the loop: wait_group 0 + __syncthreads before the next C tile reuses the stages.
// Split-K (g.splits > 1): grid z = splits x blocks; a CTA reduces K-tiles of its range only and
// writes fp32 partials to g.workspace (block_gemm_split_reduce_kernel sums them in order).
template <typename T, bool kAkm, bool kBkn>
__global__ void __launch_bounds__(BlockGemmMmaTile::kThreads) block_gemm_mma_kernel(const BlockGemm g) {
  using Tile = BlockGemmMmaTile;
  constexpr int kM = Tile::kM, kN = Tile::kN, kK = Tile::kK, kS = Tile::kStages;
  __shared__ __align__(16) T a_smem[kS][Tile::kAElems];
  __shared__ __align__(16) T b_smem[kS][Tile::kBElems];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int wm = (warp / Tile::kWarpsN) * Tile::kWarpM, wn = (warp % Tile::kWarpsN) * Tile::kWarpN;
  const int64_t j0 = int64_t(blockIdx.x) * kN;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // The A rows / B columns are m / n; vector staging needs the contiguous stride 1 and every
  // other stride a multiple of 8 elements (16 bytes), from a 16-byte aligned base.
  const bool vec_a = (kAkm ? g.a_ms == 1 && g.a_ks % 8 == 0 : g.a_ks == 1 && g.a_ms % 8 == 0) && g.a_bs % 8 == 0 &&
                     aligned(g.a);
  const bool vec_b = (kBkn ? g.b_ns == 1 && g.b_ks % 8 == 0 : g.b_ks == 1 && g.b_ns % 8 == 0) && g.b_bs % 8 == 0 &&
                     aligned(g.b);
  const int splits = g.splits, split = int(blockIdx.z) % splits;
  const int64_t ktiles = ceil_div(g.k, kK), per = ceil_div(ktiles, splits);
  const int64_t kt_begin = split * per, kt_end = kt_begin + per < ktiles ? kt_begin + per : ktiles;
  const int KT = kt_end > kt_begin ? int(kt_end - kt_begin) : 0;

  for (int64_t blk = blockIdx.z / splits; blk < g.batch; blk += gridDim.z / splits) {
    const T* A = static_cast<const T*>(g.a) + blk * g.a_bs;
    const T* B = static_cast<const T*>(g.b) + blk * g.b_bs;
    for (int64_t i0 = int64_t(blockIdx.y) * kM; i0 < g.m; i0 += int64_t(gridDim.y) * kM) {
      const auto load = [&](int kt, int stage) {  // K-tile kt of this CTA's range
        const int64_t p0 = (kt_begin + kt) * kK;
        stage_operand<T, kM, kAkm>(a_smem[stage], A, g.a_ms, g.a_ks, i0, g.m, p0, g.k, vec_a);
        stage_operand<T, kN, kBkn>(b_smem[stage], B, g.b_ns, g.b_ks, j0, g.n, p0, g.k, vec_b);
      };
      float acc[Tile::kMi][Tile::kNj][4] = {};
#pragma unroll
      for (int st = 0; st < kS - 1; ++st) {
        if (st < KT) load(st, st);
        cp_async_commit();
      }
#pragma unroll 1
      for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<kS - 2>();
        __syncthreads();
        if (kt + kS - 1 < KT) load(kt + kS - 1, (kt + kS - 1) % kS);
        cp_async_commit();
        const T* at = a_smem[kt % kS];
        const T* bt = b_smem[kt % kS];
#pragma unroll
        for (int kk = 0; kk < kK; kk += 16) {
          uint32_t a[Tile::kMi][4];
#pragma unroll
          for (int mi = 0; mi < Tile::kMi; ++mi) {
            if constexpr (kAkm) load_a_frag_km(a[mi], at, Tile::kPitchM, wm + mi * 16, kk);
            else load_a_frag(a[mi], at, Tile::kPitchK, wm + mi * 16, kk);
          }
#pragma unroll
          for (int nj = 0; nj < Tile::kNj; nj += 2) {
            uint32_t b_lo[2], b_hi[2];
            if constexpr (kBkn) load_b_frags_kn(b_lo, b_hi, bt, Tile::kPitchN, kk, wn + nj * 8);
            else load_b_frags(b_lo, b_hi, bt, Tile::kPitchK, wn + nj * 8, kk);
#pragma unroll
            for (int mi = 0; mi < Tile::kMi; ++mi) {
              mma_m16n8k16<T>(acc[mi][nj], a[mi], b_lo);
              mma_m16n8k16<T>(acc[mi][nj + 1], a[mi], b_hi);
            }
          }
        }
      }
      cp_async_wait<0>();
      __syncthreads();  // the stages are reloaded by the next C tile's prologue
      // c[i] of an m16n8 tile sits at (row g + 8*(i/2), col 2t + i%2): the pair c, c + 1 is two
      // adjacent columns, one 32-bit store (64-bit for the fp32 partials) where C's rows are
      // contiguous and pairs aligned; a warp then writes 16 bytes of each of 8 rows per store.
      const int gq = lane / 4, tq = lane % 4;
      T* C = static_cast<T*>(g.c) + blk * g.c_bs;
      float* Wp = splits > 1 ? g.workspace + ((int64_t(split) * g.batch + blk) * g.m) * g.n : nullptr;
      const bool pairs = splits > 1 ? g.n % 2 == 0
                                    : g.c_ns == 1 && g.c_ms % 2 == 0 && reinterpret_cast<uintptr_t>(C) % 4 == 0;
#pragma unroll
      for (int mi = 0; mi < Tile::kMi; ++mi)
#pragma unroll
        for (int nj = 0; nj < Tile::kNj; ++nj)
#pragma unroll
          for (int c = 0; c < 4; c += 2) {
            const int64_t i = i0 + wm + mi * 16 + gq + 8 * (c / 2), j = j0 + wn + nj * 8 + 2 * tq;
            if (i >= g.m || j >= g.n) continue;
            const float lo = acc[mi][nj][c], hi = acc[mi][nj][c + 1];
            if (pairs && j + 1 < g.n) {
              if (splits == 1) *reinterpret_cast<uint32_t*>(C + i * g.c_ms + j) = pack2<T>(lo, hi);
              else *reinterpret_cast<float2*>(Wp + i * g.n + j) = make_float2(lo, hi);
            } else if (splits == 1) {  // a permuted C (the two-GEMM Monarch's y: columns l apart)
              C[i * g.c_ms + j * g.c_ns] = from_f<T>(lo);  // known uncoalesced (above)
              if (j + 1 < g.n) C[i * g.c_ms + (j + 1) * g.c_ns] = from_f<T>(hi);  // known uncoalesced
            } else {
              Wp[i * g.n + j] = lo;
              if (j + 1 < g.n) Wp[i * g.n + j + 1] = hi;
            }
          }
    }
  }
}

// C = sum over splits of the fp32 partials, in split order (bitwise reproducible), rounded once.
template <typename T>
__global__ void block_gemm_split_reduce_kernel(const BlockGemm g) {
  const int64_t per = g.m * g.n, total = g.batch * per;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < g.splits; ++s) acc += g.workspace[s * total + idx];
    const int64_t blk = idx / per, i = (idx % per) / g.n, j = idx % g.n;
    static_cast<T*>(g.c)[blk * g.c_bs + i * g.c_ms + j * g.c_ns] = from_f<T>(acc);
  }
}

}  // namespace mmm
