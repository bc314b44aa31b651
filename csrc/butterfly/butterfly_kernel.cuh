// Butterfly product kernels (csrc/butterfly/params.h has the math). fp32 arithmetic whatever the
// storage (float2 for complex64); storage dtypes are runtime values (one uniform switch per load).
//
//   butterfly_fwd_kernel      a CTA owns a tile: R units (rows of one stack, or in the multi-pass
//                             path one segment of R rows) of M = 2^k elements, held in shared
//                             memory for the whole pass. It reads them from HBM once, applies the
//                             pass's factors in groups of up to 3 consecutive strides (each thread
//                             takes the 8 elements one group couples into registers, applies the
//                             3 factors there, writes them back: one shared-memory round trip and
//                             one barrier per 3 factors), and writes them once. Each group's
//                             twiddles are read once per tile and used for all R units.
//   butterfly_bwd_kernel      the same tiles; keeps the pass input X, a working copy and the
//                             gradient D in shared memory. For each group, last to first, it
//                             recomputes that group's input from X (O(groups^2) group steps, no
//                             stored intermediates), then back-propagates through the group in
//                             registers; the twiddle gradient of its R units is summed in
//                             registers and stored into this CTA's own fp32 partial slot.
//   butterfly_reduce_kernel   dtwiddle = sum of the partial slots in slot order (deterministic).
//
// A pass applies the factors whose strides lie in [2^b0, 2^(b0+kf)), which couple the element
// index bits [b0, b0 + kf). Its tile unit holds M = 2^k elements, k = c + kf: local index
// l = (m << c) | lo stands for e = (h << (b0+kf)) | (m << b0) | (qh << c) | lo, segment
// seg = (h, qh). The c low "spectator" bits (c <= b0) are element bits no factor of the pass
// touches: they make every global access of a tile a run of 2^c consecutive elements (a 32-byte
// sector) instead of single elements 2^b0 apart. One pass holds all factors when a whole row fits
// on chip; longer rows split every block into passes through an fp32 workspace
// (butterfly_launch.cu).
#pragma once
#include <type_traits>

#include "butterfly/params.h"
#include "core/cuda_utils.cuh"

namespace mmm {

template <bool kCx> using bf_val = std::conditional_t<kCx, float2, float>;

__device__ __forceinline__ float bf_zero(float) { return 0.f; }
__device__ __forceinline__ float2 bf_zero(float2) { return make_float2(0.f, 0.f); }
__device__ __forceinline__ float bf_conj(float a) { return a; }
__device__ __forceinline__ float2 bf_conj(float2 a) { return make_float2(a.x, -a.y); }
__device__ __forceinline__ float bf_add(float a, float b) { return a + b; }
__device__ __forceinline__ float2 bf_add(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
// a * b + c
__device__ __forceinline__ float bf_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ float2 bf_fma(float2 a, float2 b, float2 c) {
  return make_float2(fmaf(a.x, b.x, fmaf(-a.y, b.y, c.x)), fmaf(a.x, b.y, fmaf(a.y, b.x, c.y)));
}
__device__ __forceinline__ float bf_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float2 bf_mul(float2 a, float2 b) { return bf_fma(a, b, make_float2(0.f, 0.f)); }

// Element i of a tensor of storage type t (real: fp32/fp16/bf16; complex: complex64).
template <bool kCx> __device__ __forceinline__ bf_val<kCx> bf_load(const void* p, DType t, int64_t i) {
  if constexpr (kCx) {
    return static_cast<const float2*>(p)[i];
  } else {
    switch (t) {
      case DType::kFloat16: return __half2float(static_cast<const __half*>(p)[i]);
      case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
      default: return static_cast<const float*>(p)[i];
    }
  }
}

template <bool kCx> __device__ __forceinline__ void bf_store(void* p, DType t, int64_t i, bf_val<kCx> v) {
  if constexpr (kCx) {
    static_cast<float2*>(p)[i] = v;
  } else {
    switch (t) {
      case DType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
      case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
      default: static_cast<float*>(p)[i] = v; break;
    }
  }
}

// The 2x2 matrix of one pair: 4 consecutive twiddle entries (16 B fp32, 32 B complex64, 8 B half;
// the torch allocation and the 4-entry stride keep them aligned for one vector load).
template <bool kCx> __device__ __forceinline__ void bf_load_mat(bf_val<kCx> (&t)[4], const void* tw, DType dt, int64_t pair) {
  if constexpr (kCx) {
    const float4* src = static_cast<const float4*>(tw) + pair * 2;
    const float4 a = src[0], b = src[1];
    t[0] = make_float2(a.x, a.y); t[1] = make_float2(a.z, a.w);
    t[2] = make_float2(b.x, b.y); t[3] = make_float2(b.z, b.w);
  } else if (dt == DType::kFloat32) {
    const float4 a = static_cast<const float4*>(tw)[pair];
    t[0] = a.x; t[1] = a.y; t[2] = a.z; t[3] = a.w;
  } else {
    const uint2 raw = static_cast<const uint2*>(tw)[pair];
    const uint32_t w[2] = {raw.x, raw.y};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (dt == DType::kFloat16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[h]));
        t[2 * h] = f.x; t[2 * h + 1] = f.y;
      } else {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[h]));
        t[2 * h] = f.x; t[2 * h + 1] = f.y;
      }
    }
  }
}

// dst[0..3] (one pair's slot in an fp32 / complex64 partial buffer, 16 B / 32 B aligned) =
// acc, or += acc; vector accesses, as bf_load_mat.
template <bool kCx> __device__ __forceinline__ void bf_accum_mat(bf_val<kCx>* dst, const bf_val<kCx> (&acc)[4], bool first) {
  float4* d = reinterpret_cast<float4*>(dst);
  if constexpr (kCx) {
    float4 a = make_float4(acc[0].x, acc[0].y, acc[1].x, acc[1].y), b = make_float4(acc[2].x, acc[2].y, acc[3].x, acc[3].y);
    if (!first) {
      const float4 pa = d[0], pb = d[1];
      a = make_float4(a.x + pa.x, a.y + pa.y, a.z + pa.z, a.w + pa.w);
      b = make_float4(b.x + pb.x, b.y + pb.y, b.z + pb.z, b.w + pb.w);
    }
    d[0] = a;
    d[1] = b;
  } else {
    float4 a = make_float4(acc[0], acc[1], acc[2], acc[3]);
    if (!first) {
      const float4 pa = d[0];
      a = make_float4(a.x + pa.x, a.y + pa.y, a.z + pa.z, a.w + pa.w);
    }
    d[0] = a;
  }
}

// Shared-memory index: an XOR swizzle of the bank bits by the higher ones (the low 5 bits for
// fp32, the low 4 for 8-byte complex values, 16 of which fill the 32 banks), which makes every
// group access pattern of 3 or 2 strides from any lowest stride conflict-free; only some 1-factor
// groups stay 2-way (a model of all patterns up to M = 2^12: 10% extra wavefronts in all for
// fp32, 5% for complex, where a 5-bit swizzle of complex values has 33%). Buffers are whole
// multiples of 32 elements so the swizzle stays inside them.
template <bool kCx> __device__ __forceinline__ int bf_swz(int i) {
  constexpr int kBits = kCx ? 4 : 5;
  const int v = i >> kBits;
  return i ^ ((v ^ (v << 2) ^ (v << 3)) & ((1 << kBits) - 1));
}

// One pass over one tile, as the kernels see it.
struct BfPass {
  int64_t n, batch, nstacks;
  int log_n, nfactors;     // L = nblocks * log_n
  bool increasing;
  int f0, f1;              // the pass's factors
  int b0, k, c;            // M = 2^k local elements: c spectator bits, then bits [b0, b0 + k - c)
  int64_t nseg;            // n / M
  int R;                   // units (batch rows) per tile
  int64_t ntb;             // tiles along the batch: ceil(batch / R)
  const void* in; int64_t in_rs, in_len; DType in_t;     // rows r = b * nstacks + s; reads e < in_len
  void* out; int64_t out_rs, out_len; DType out_t;       // writes e < out_len
  const void* tw; DType tw_t;
  // backward
  const void* dy; int64_t dy_rs; DType dy_t;
  void* partial; int64_t slots;                          // (nstacks, slots, L, n/2, 4) bf_val

  __device__ __forceinline__ int stride_log2(int f) const {
    const int block = f / log_n, idx = f % log_n;
    const bool inc = increasing != ((block & 1) != 0);
    return inc ? idx : log_n - 1 - idx;
  }
  // The group starting at factor f: its end fe and the local bit lb of its smallest stride.
  template <int kG> __device__ __forceinline__ void group(int f, int& fe, int& lb) const {
    const int block_end = (f / log_n + 1) * log_n;
    fe = min(min(f1, block_end), f + kG);
    lb = local_bit(min(stride_log2(f), stride_log2(fe - 1)));
  }
  // Local bit of element bit s (b0 <= s < b0 + k - c), and back.
  __device__ __forceinline__ int local_bit(int s) const { return s - b0 + c; }
  __device__ __forceinline__ int elem_bit(int lbit) const { return lbit + b0 - c; }
  // Global element index of local element l of segment seg.
  __device__ __forceinline__ int64_t elem(int64_t seg, int64_t l) const {
    const int qbits = b0 - c, kf = k - c;
    const int64_t qh = seg & ((int64_t(1) << qbits) - 1), h = seg >> qbits;
    return (h << (b0 + kf)) | ((l >> c) << b0) | (qh << c) | (l & ((1 << c) - 1));
  }
};

// Local index of element j (< 2^G) of work item w for a group whose lowest local bit is lb.
__device__ __forceinline__ int bf_local(int w, int lb, int G, int j) {
  return ((w >> lb) << (lb + G)) | (w & ((1 << lb) - 1)) | (j << lb);
}
// The m-th pair (m < 2^(G-1)) of the factor at group bit ab: the index j of its low element.
__device__ __forceinline__ int bf_pair_lo(int m, int ab) { return ((m >> ab) << (ab + 1)) | (m & ((1 << ab) - 1)); }

// Forward through one group of G factors on the R units of a tile held in buf ((R, M) swizzled).
// kInc: the group's first factor has its smallest stride. A template parameter so that every
// register array index below is a compile-time constant (a runtime one puts v in local memory).
template <bool kCx, int G, bool kInc>
__device__ __forceinline__ void bf_group_fwd(const BfPass& P, bf_val<kCx>* buf, int M, int R, int64_t stack, int64_t seg, int f, int lb) {
  using V = bf_val<kCx>;
  constexpr int kE = 1 << G, kH = kE / 2;
  for (int w = threadIdx.x; w < (M >> G); w += blockDim.x) {
    V t[G][kH][4];
#pragma unroll
    for (int a = 0; a < G; ++a) {
      const int ab = kInc ? a : G - 1 - a, s = P.elem_bit(lb + ab);
      const int64_t mat = (stack * P.nfactors + f + a) * (P.n / 2);
#pragma unroll
      for (int m = 0; m < kH; ++m) {
        const int64_t e = P.elem(seg, bf_local(w, lb, G, bf_pair_lo(m, ab)));
        bf_load_mat<kCx>(t[a][m], P.tw, P.tw_t, mat + butterfly_pair(e, s));
      }
    }
    for (int r = 0; r < R; ++r) {
      V v[kE];
#pragma unroll
      for (int j = 0; j < kE; ++j) v[j] = buf[bf_swz<kCx>(r * M + bf_local(w, lb, G, j))];
#pragma unroll
      for (int a = 0; a < G; ++a) {
        const int ab = kInc ? a : G - 1 - a;
#pragma unroll
        for (int m = 0; m < kH; ++m) {
          const int jl = bf_pair_lo(m, ab), jh = jl | (1 << ab);
          const V lo = v[jl], hi = v[jh];
          v[jl] = bf_fma(t[a][m][0], lo, bf_mul(t[a][m][1], hi));
          v[jh] = bf_fma(t[a][m][2], lo, bf_mul(t[a][m][3], hi));
        }
      }
#pragma unroll
      for (int j = 0; j < kE; ++j) buf[bf_swz<kCx>(r * M + bf_local(w, lb, G, j))] = v[j];
    }
  }
}

template <bool kCx, int kG>
__device__ __forceinline__ void bf_group_fwd_any(const BfPass& P, bf_val<kCx>* buf, int M, int R, int64_t stack,
                                                 int64_t seg, int f, int fe, int lb) {
  const bool inc = P.local_bit(P.stride_log2(f)) == lb;
  switch (fe - f) {
    case 1: bf_group_fwd<kCx, 1, true>(P, buf, M, R, stack, seg, f, lb); break;
    case 2:
      if (inc) bf_group_fwd<kCx, 2, true>(P, buf, M, R, stack, seg, f, lb);
      else bf_group_fwd<kCx, 2, false>(P, buf, M, R, stack, seg, f, lb);
      break;
    default:
      if constexpr (kG >= 3) {
        if (inc) bf_group_fwd<kCx, 3, true>(P, buf, M, R, stack, seg, f, lb);
        else bf_group_fwd<kCx, 3, false>(P, buf, M, R, stack, seg, f, lb);
      }
      break;
  }
}

// Tile t -> (stack, seg, tb).
__device__ __forceinline__ void bf_tile(const BfPass& P, int64_t t, int64_t& stack, int64_t& seg, int64_t& tb) {
  tb = t % P.ntb;
  const int64_t rest = t / P.ntb;
  seg = rest % P.nseg;
  stack = rest / P.nseg;
}

// (R, M) tile of `src` rows into buf (swizzled); units past the batch and elements >= len read 0.
// A batch of loads into registers, then their stores: a shared-memory store right behind its
// load stalls the warp until the load returns (in-order issue): one load in flight per warp.
constexpr int kBfLoadBatch = 8;
template <bool kCx>
__device__ __forceinline__ void bf_load_tile(const BfPass& P, bf_val<kCx>* buf, const void* src, int64_t rs, int64_t len, DType t,
                             int M, int64_t stack, int64_t seg, int64_t tb) {
  const int k = P.k, total = P.R * M;
  for (int i0 = threadIdx.x; i0 < total; i0 += kBfLoadBatch * blockDim.x) {
    bf_val<kCx> v[kBfLoadBatch];
#pragma unroll
    for (int j = 0; j < kBfLoadBatch; ++j) {
      const int i = i0 + j * blockDim.x, r = i >> k, l = i & (M - 1);
      const int64_t b = tb * P.R + r, e = P.elem(seg, l);
      v[j] = bf_zero(bf_val<kCx>());
      if (i < total && b < P.batch && e < len) v[j] = bf_load<kCx>(src, t, (b * P.nstacks + stack) * rs + e);
    }
#pragma unroll
    for (int j = 0; j < kBfLoadBatch; ++j)
      if (i0 + j * blockDim.x < total) buf[bf_swz<kCx>(i0 + j * blockDim.x)] = v[j];
  }
}

template <bool kCx>
__device__ __forceinline__ void bf_store_tile(const BfPass& P, const bf_val<kCx>* buf, int M, int64_t stack, int64_t seg, int64_t tb) {
  const int k = P.k;
  for (int i = threadIdx.x; i < P.R * M; i += blockDim.x) {
    const int r = i >> k, l = i & (M - 1);
    const int64_t b = tb * P.R + r, e = P.elem(seg, l);
    if (b < P.batch && e < P.out_len) bf_store<kCx>(P.out, P.out_t, (b * P.nstacks + stack) * P.out_rs + e, buf[bf_swz<kCx>(i)]);
  }
}

// Dynamic smem: one (R, M) buffer rounded up to 32 elements. blockDim.x is a multiple of 32.
template <bool kCx>
__global__ void __launch_bounds__(256) butterfly_fwd_kernel(const BfPass P) {
  using V = bf_val<kCx>;
  extern __shared__ float4 bf_smem_fwd[];
  V* buf = reinterpret_cast<V*>(bf_smem_fwd);
  const int M = 1 << P.k;
  const int64_t tiles = P.nstacks * P.nseg * P.ntb;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    int64_t stack, seg, tb;
    bf_tile(P, t, stack, seg, tb);
    const int R = int(P.batch - tb * P.R < P.R ? P.batch - tb * P.R : int64_t(P.R));
    bf_load_tile<kCx>(P, buf, P.in, P.in_rs, P.in_len, P.in_t, M, stack, seg, tb);
    __syncthreads();
    for (int f = P.f0, fe, lb; f < P.f1; f = fe) {
      P.group<3>(f, fe, lb);
      bf_group_fwd_any<kCx, 3>(P, buf, M, R, stack, seg, f, fe, lb);
      __syncthreads();
    }
    bf_store_tile<kCx>(P, buf, M, stack, seg, tb);
    __syncthreads();  // the next tile reuses buf
  }
}

// Backward through group [f, f + G): xs holds the group's input, d the gradient at its output
// (replaced by the gradient at its input). The twiddle gradient of the tile's units goes to
// partial slot `slot` (stored when `first`, else added: this CTA owns the slot).
template <bool kCx, int G, bool kInc>
__device__ __forceinline__ void bf_group_bwd(const BfPass& P, const bf_val<kCx>* xs, bf_val<kCx>* d, int M, int R, int64_t stack,
                             int64_t seg, int64_t slot, bool first, int f, int lb) {
  using V = bf_val<kCx>;
  constexpr int kE = 1 << G, kH = kE / 2;
  for (int w = threadIdx.x; w < (M >> G); w += blockDim.x) {
    V t[G][kH][4], acc[G][kH][4];
#pragma unroll
    for (int a = 0; a < G; ++a) {
      const int ab = kInc ? a : G - 1 - a, s = P.elem_bit(lb + ab);
#pragma unroll
      for (int m = 0; m < kH; ++m) {
        const int64_t e = P.elem(seg, bf_local(w, lb, G, bf_pair_lo(m, ab)));
        bf_load_mat<kCx>(t[a][m], P.tw, P.tw_t, (stack * P.nfactors + f + a) * (P.n / 2) + butterfly_pair(e, s));
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[a][m][i] = bf_zero(V());
      }
    }
    for (int r = 0; r < R; ++r) {
      V v[G][kE], g[kE];  // v[a]: the input of factor a
#pragma unroll
      for (int j = 0; j < kE; ++j) {
        const int i = bf_swz<kCx>(r * M + bf_local(w, lb, G, j));
        v[0][j] = xs[i];
        g[j] = d[i];
      }
#pragma unroll
      for (int a = 0; a + 1 < G; ++a) {
        const int ab = kInc ? a : G - 1 - a;
#pragma unroll
        for (int j = 0; j < kE; ++j) v[a + 1][j] = v[a][j];
#pragma unroll
        for (int m = 0; m < kH; ++m) {
          const int jl = bf_pair_lo(m, ab), jh = jl | (1 << ab);
          v[a + 1][jl] = bf_fma(t[a][m][0], v[a][jl], bf_mul(t[a][m][1], v[a][jh]));
          v[a + 1][jh] = bf_fma(t[a][m][2], v[a][jl], bf_mul(t[a][m][3], v[a][jh]));
        }
      }
#pragma unroll
      for (int a = G - 1; a >= 0; --a) {
        const int ab = kInc ? a : G - 1 - a;
#pragma unroll
        for (int m = 0; m < kH; ++m) {
          const int jl = bf_pair_lo(m, ab), jh = jl | (1 << ab);
          const V xl = bf_conj(v[a][jl]), xh = bf_conj(v[a][jh]), gl = g[jl], gh = g[jh];
          acc[a][m][0] = bf_fma(gl, xl, acc[a][m][0]);
          acc[a][m][1] = bf_fma(gl, xh, acc[a][m][1]);
          acc[a][m][2] = bf_fma(gh, xl, acc[a][m][2]);
          acc[a][m][3] = bf_fma(gh, xh, acc[a][m][3]);
          g[jl] = bf_fma(bf_conj(t[a][m][0]), gl, bf_mul(bf_conj(t[a][m][2]), gh));
          g[jh] = bf_fma(bf_conj(t[a][m][1]), gl, bf_mul(bf_conj(t[a][m][3]), gh));
        }
      }
#pragma unroll
      for (int j = 0; j < kE; ++j) d[bf_swz<kCx>(r * M + bf_local(w, lb, G, j))] = g[j];
    }
    V* part = static_cast<V*>(P.partial);
#pragma unroll
    for (int a = 0; a < G; ++a)
#pragma unroll
      for (int m = 0; m < kH; ++m) {
        const int ab = kInc ? a : G - 1 - a;
        const int64_t pair = butterfly_pair(P.elem(seg, bf_local(w, lb, G, bf_pair_lo(m, ab))), P.elem_bit(lb + ab));
        bf_accum_mat<kCx>(part + (((stack * P.slots + slot) * P.nfactors + f + a) * (P.n / 2) + pair) * 4, acc[a][m], first);
      }
  }
}

template <bool kCx, int kG>
__device__ __forceinline__ void bf_group_bwd_any(const BfPass& P, const bf_val<kCx>* xs, bf_val<kCx>* d, int M, int R,
                                                 int64_t stack, int64_t seg, int64_t slot, bool first, int f, int fe,
                                                 int lb) {
  const bool inc = P.local_bit(P.stride_log2(f)) == lb;
  switch (fe - f) {
    case 1: bf_group_bwd<kCx, 1, true>(P, xs, d, M, R, stack, seg, slot, first, f, lb); break;
    case 2:
      if (inc) bf_group_bwd<kCx, 2, true>(P, xs, d, M, R, stack, seg, slot, first, f, lb);
      else bf_group_bwd<kCx, 2, false>(P, xs, d, M, R, stack, seg, slot, first, f, lb);
      break;
    default:
      if constexpr (kG >= 3) {
        if (inc) bf_group_bwd<kCx, 3, true>(P, xs, d, M, R, stack, seg, slot, first, f, lb);
        else bf_group_bwd<kCx, 3, false>(P, xs, d, M, R, stack, seg, slot, first, f, lb);
      }
      break;
  }
}

// Grid: nstacks * nseg * slots lanes (grid-strided); lane (stack, seg, c) does the batch tiles
// tb = c, c + slots, ... in order, so partial slot c of each pair is written by one CTA in a
// fixed order. Dynamic smem: three (R, M) buffers (X, working copy, D), each rounded up to 32.
// kG: 3 for real, 2 for complex (registers).
template <bool kCx, int kG>
__global__ void __launch_bounds__(256) butterfly_bwd_kernel(const BfPass P) {
  using V = bf_val<kCx>;
  extern __shared__ float4 bf_smem_bwd[];
  const int M = 1 << P.k;
  const int stride = ((P.R * M + 31) / 32) * 32;
  V* xs = reinterpret_cast<V*>(bf_smem_bwd);
  V* wk = xs + stride;
  V* d = wk + stride;
  const int64_t lanes = P.nstacks * P.nseg * P.slots;
  int ngroups = 0;
  for (int f = P.f0, fe, lb; f < P.f1; f = fe, ++ngroups) P.group<kG>(f, fe, lb);
  for (int64_t lane = blockIdx.x; lane < lanes; lane += gridDim.x) {
    const int64_t slot = lane % P.slots, seg = (lane / P.slots) % P.nseg, stack = lane / (P.slots * P.nseg);
    for (int64_t tb = slot; tb < P.ntb; tb += P.slots) {
      const int R = int(P.batch - tb * P.R < P.R ? P.batch - tb * P.R : int64_t(P.R));
      bf_load_tile<kCx>(P, xs, P.in, P.in_rs, P.in_len, P.in_t, M, stack, seg, tb);
      bf_load_tile<kCx>(P, d, P.dy, P.dy_rs, P.n, P.dy_t, M, stack, seg, tb);
      __syncthreads();
      for (int gt = ngroups - 1; gt >= 0; --gt) {
        // wk <- the input of group gt: X through groups 0 .. gt-1.
        for (int i = threadIdx.x; i < stride; i += blockDim.x) wk[i] = xs[i];
        __syncthreads();
        int f = P.f0, fe, lb;
        for (int gi = 0; gi < gt; ++gi, f = fe) {
          P.group<kG>(f, fe, lb);
          bf_group_fwd_any<kCx, kG>(P, wk, M, R, stack, seg, f, fe, lb);
          __syncthreads();
        }
        P.group<kG>(f, fe, lb);
        bf_group_bwd_any<kCx, kG>(P, wk, d, M, R, stack, seg, slot, tb == slot, f, fe, lb);
        __syncthreads();
      }
      bf_store_tile<kCx>(P, d, M, stack, seg, tb);
      __syncthreads();
    }
  }
}

// dtwiddle[s, rest] = sum over slots c of partial[s, c, rest], rest = (f, p, ij); stored in
// twiddle's dtype.
template <bool kCx>
__global__ void __launch_bounds__(256) butterfly_reduce_kernel(const bf_val<kCx>* partial, int64_t nstacks, int64_t slots,
                                                               int64_t per_stack, void* dtw, DType dtw_t) {
  using V = bf_val<kCx>;
  const int64_t total = nstacks * per_stack;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = i / per_stack, rest = i % per_stack;
    V acc = bf_zero(V());
    for (int64_t c = 0; c < slots; ++c) acc = bf_add(acc, partial[(s * slots + c) * per_stack + rest]);
    bf_store<kCx>(dtw, dtw_t, i, acc);
  }
}

}  // namespace mmm
