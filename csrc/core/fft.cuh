// CTA- and warp-level complex FFT building blocks in shared memory and registers (fp32).
//
// The algorithm is the in-place radix-2 decimation-in-frequency (DIF) FFT, its stages grouped so
// that each trip through shared memory does several of them in registers:
//   stage h (h = n/2, n/4, ..., 1): for every j with (j & h) == 0:
//       a = x[j], b = x[j + h];  x[j] = a + b;  x[j + h] = (a - b) * W_{2h}^(j mod h)
//   with W_m = exp(-2*pi*i/m) (exp(+2*pi*i/m) for the inverse); after all stages position p holds
//   bin bitrev(p) (decimation in time, DIT, is the exact mirror: bit-reversed in, natural out).
// * stages with h >= 256 ("CTA passes"): up to 4 stages per pass, a thread loads 16 points at
//   stride h_last from shared memory, does the 4 stages in registers, stores them back (the
//   first DIF pass may load from global memory instead, the last DIT pass store to it:
//   cta_fft_dif_load, cta_fft_dit_store);
// * the last 8 stages (h = 128 .. 1, "warp pass"): a half warp holds 256 consecutive points,
//   16 per lane, first with the lanes 1 point apart (stages h = 128 .. 16 pair registers), then,
//   after one transpose through shared memory inside the warp, 16 points apart (stages h = 8 .. 1
//   pair registers): no shuffles, whose cost per value is that of a shared-memory access (one
//   transpose, a store and a load, replaces five shuffle stages of the warp-only version);
// * fft_warp_kernel's transforms of n <= 512 points that never touch shared memory (warp_dif):
//   16 points per lane in registers, stages h >= 32 in registers, h <= 16 through
//   __shfl_xor_sync;
// * natural order out (cta_fft) costs one more in-place swap pass (bit reversal); kernels that
//   can fold the permutation into their global store, or that multiply spectra point-wise and
//   transform back (convolution: DIF forward, multiply in bit-reversed order, DIT inverse), use
//   cta_fft_dif / cta_fft_dit and skip it.
// Twiddles: exp(-2*pi*i*k/n) from sincospif (correctly reduced, ~1 ulp); the constant part of
// each register stage's twiddle is one of the 16th roots of unity (rounded from double).
//
// Shared-memory layout: element i of the transform lives at data[swz<kSwizzle>(i, log2n)], which
// is i itself for kSwizzle = false (the default: plain natural order, what callers expect) and
// a bijection of [0, n) that only permutes within aligned groups of 16 for kSwizzle = true. The
// swizzle makes every access of the passes and of the bit reversal bank-conflict free; without
// it the bit reversal and the warp pass's second layout have conflicts. Either way the transform
// needs exactly n float2 (smem_floats(log2n) floats), plus one float2 at data[n] (unswizzled) for
// the real helpers.
// Registers: a caller kernel needs ~100 per thread, so launch it with at most 512 threads
// (__launch_bounds__(512)); 1024 threads force 64 registers and spills.
#pragma once
#ifndef MMM_FFT_HOST_EMULATION  // tests/emulate/fft.cpp runs this code on CPU threads
#include <cuda_runtime.h>
#endif

namespace mmm::fft {

constexpr int kWarpLog2 = 9;              // a warp pass covers 512 points ...
constexpr int kWarpPoints = 1 << kWarpLog2;
constexpr int kPerLane = kWarpPoints / 32;  // ... 16 per lane
constexpr int kPassLog2 = 4;              // a CTA pass does up to 4 stages (16 points per thread)
constexpr int kBlockLog2 = 8;             // the CTA warp pass: 8 stages on 256-point blocks

// Floats of shared memory cta_fft needs for n = 2^log2n points (no padding: the swizzle is a
// permutation). The real helpers need 2 more (the slot data[n]).
__host__ __device__ constexpr int smem_floats(int log2n) { return 2 << log2n; }

// Where element i of an n = 2^log2n transform is stored. XORs the low 4 bits with bits 4..7 and,
// for n > 256, also with the top 4 bits, so that 16 lanes touching 16 consecutive elements, 16
// elements 16 apart (the warp pass's second layout: bits 4..7 vary) or the elements bit reversal
// sends 16 consecutive ones to (the top bits vary) all hit 16 different 8-byte bank pairs, for
// every n (checked exhaustively for n <= 2^15, and by tests/emulate/fft.cpp's counts). i in
// [0, n) maps into [0, n). The real helpers' extra slot data[n] is always addressed directly,
// never through swz.
template <bool kSwizzle>
__host__ __device__ __forceinline__ int swz(int i, int log2n) {
  if constexpr (!kSwizzle) return i;
  else return i ^ (((i >> 4) ^ (log2n > 8 ? i >> (log2n - 4) : 0)) & 15);
}

__device__ __forceinline__ float2 cadd(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ float2 csub(float2 a, float2 b) { return make_float2(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(fmaf(a.x, b.x, -a.y * b.y), fmaf(a.x, b.y, a.y * b.x));
}
__device__ __forceinline__ float2 cconj(float2 a) { return make_float2(a.x, -a.y); }

// exp(-2*pi*i*k/n), n = 2^log2n (log2n <= 24), any integer k (reduced mod n first, so the
// argument of sincospif is exact: 2k/n is a dyadic rational with < 24 significant bits).
__device__ __forceinline__ float2 twiddle(int k, int log2n) {
  const int r = k & ((1 << log2n) - 1);
  float s, c;
  sincospif(ldexpf(float(r), 1 - log2n), &s, &c);
  return make_float2(c, -s);
}
template <bool kInverse>
__device__ __forceinline__ float2 twiddle_dir(int k, int log2n) {
  const float2 w = twiddle(k, log2n);
  return kInverse ? cconj(w) : w;
}

// W_16^k for k in [0, 8) (conjugated for the inverse): the constant factors of register stages.
template <bool kInverse>
__device__ __forceinline__ float2 root16(int k) {
  constexpr float c1 = 0.92387953251128674f, s1 = 0.38268343236508978f, r2 = 0.70710678118654752f;
  float2 w;
  switch (k) {
    case 0: w = make_float2(1.f, 0.f); break;
    case 1: w = make_float2(c1, -s1); break;
    case 2: w = make_float2(r2, -r2); break;
    case 3: w = make_float2(s1, -c1); break;
    case 4: w = make_float2(0.f, -1.f); break;
    case 5: w = make_float2(-s1, -c1); break;
    case 6: w = make_float2(-r2, -r2); break;
    default: w = make_float2(-c1, -s1); break;
  }
  return kInverse ? cconj(w) : w;
}

// ---------------------------------------------------------------------------------------------
// Register-level radix-2^kR DIF / DIT on points v[m] = x[base + m*s], m < 2^kR, s = stride of
// the last stage (h_last). Stage t (t = 0 .. kR-1) has h = s * 2^(kR-1-t) and pairs m with
// m + M, M = 2^(kR-1-t); its twiddle for v[m] (m & M == 0) is
//   W_{2h}^((base + m*s) mod h) = W_{2h}^o * W_{2M}^(m mod M),   o = base mod s,
// given that base - o is a multiple of 2h_first. `wo[t]` = W_{2h_t}^o (computed by the caller,
// kR sincospif per 2^kR points); the second factor is a compile-time root of unity.
template <int kR, bool kInverse>
__device__ __forceinline__ void radix_dif(float2 (&v)[1 << kR], const float2 (&wo)[kR]) {
#pragma unroll
  for (int t = 0; t < kR; ++t) {
    const int M = 1 << (kR - 1 - t);
#pragma unroll
    for (int m = 0; m < (1 << kR); ++m) {
      if (m & M) continue;
      const float2 a = v[m], b = v[m + M];
      v[m] = cadd(a, b);
      const int c = m & (M - 1);  // W_{2M}^c = W_16^(c * 8 / M)
      const float2 w = c == 0 ? wo[t] : cmul(wo[t], root16<kInverse>(c * 8 / M));
      v[m + M] = cmul(csub(a, b), w);
    }
  }
}

// The mirror (DIT): stages in the opposite order, twiddle applied to the second input.
template <int kR, bool kInverse>
__device__ __forceinline__ void radix_dit(float2 (&v)[1 << kR], const float2 (&wo)[kR]) {
#pragma unroll
  for (int t = kR - 1; t >= 0; --t) {
    const int M = 1 << (kR - 1 - t);
#pragma unroll
    for (int m = 0; m < (1 << kR); ++m) {
      if (m & M) continue;
      const int c = m & (M - 1);
      const float2 w = c == 0 ? wo[t] : cmul(wo[t], root16<kInverse>(c * 8 / M));
      const float2 a = v[m], b = cmul(v[m + M], w);
      v[m] = cadd(a, b);
      v[m + M] = csub(a, b);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Warp transform (fft_warp_kernel, straight from registers): the 9 smallest stages
// (h = min(C, 512)/2 .. 1) on 512 consecutive points held as
// v[m] = x[lane + 32*m], i.e. 512/C independent DIF transforms of C = 2^log2c points each
// (log2c in [0, 9]); for C < 512 the stages with h >= C are skipped, so chunks never mix.
// Every lane of the warp must call it (full-mask shuffles).
template <bool kInverse>
__device__ __forceinline__ void warp_dif(float2 (&v)[kPerLane], int log2c, int lane) {
  // Register stages h = 256, 128, 64, 32: pair m with m + h/32.
#pragma unroll
  for (int lm = 3; lm >= 0; --lm) {
    const int M = 1 << lm, log2h = 5 + lm;  // h = 32 * M
    if (log2h >= log2c) continue;
    const float2 wl = twiddle_dir<kInverse>(lane, log2h + 1);  // W_{2h}^lane
#pragma unroll
    for (int m = 0; m < kPerLane; ++m) {
      if (m & M) continue;
      const float2 a = v[m], b = v[m + M];
      v[m] = cadd(a, b);
      const int c = m & (M - 1);  // W_{2h}^(lane + 32c) = W_{2h}^lane * W_{2M}^c
      const float2 w = c == 0 ? wl : cmul(wl, root16<kInverse>(c * 8 / M));
      v[m + M] = cmul(csub(a, b), w);
    }
  }
  // Shuffle stages h = 16 .. 1: the partner of lane is lane ^ h (same m).
#pragma unroll
  for (int lh = 4; lh >= 0; --lh) {
    const int h = 1 << lh;
    if (lh >= log2c) continue;
    const bool upper = lane & h;
    const float2 w = twiddle_dir<kInverse>(lane & (h - 1), lh + 1);  // W_{2h}^(lane mod h)
#pragma unroll
    for (int m = 0; m < kPerLane; ++m) {
      const float2 o = make_float2(__shfl_xor_sync(0xffffffffu, v[m].x, h), __shfl_xor_sync(0xffffffffu, v[m].y, h));
      v[m] = upper ? cmul(csub(o, v[m]), w) : cadd(v[m], o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// One CTA pass of kR stages whose largest half-size is 2^log2H (the last one s = 2^(log2H-kR+1)
// >= 32, so the 32 lanes of a warp touch 32 consecutive elements per register). A thread's item
// is the 2^kR elements base + m*s: load(base, s, v) fetches them into v[m], store(base, s, v)
// puts them back (SmemLoad / SmemStore below: data[swz(i)]; the first DIF pass may read global
// memory instead and the last DIT pass write it, cta_fft_dif_load / cta_fft_dit_store).
template <bool kSwizzle>
struct SmemLoad {
  const float2* data;
  int log2n;
  template <int N>
  __device__ __forceinline__ void operator()(int base, int s, float2 (&v)[N]) const {
#pragma unroll
    for (int m = 0; m < N; ++m) v[m] = data[swz<kSwizzle>(base + m * s, log2n)];
  }
};
template <bool kSwizzle>
struct SmemStore {
  float2* data;
  int log2n;
  template <int N>
  __device__ __forceinline__ void operator()(int base, int s, const float2 (&v)[N]) const {
#pragma unroll
    for (int m = 0; m < N; ++m) data[swz<kSwizzle>(base + m * s, log2n)] = v[m];
  }
};

template <int kR, bool kInverse, bool kDit, class Load, class Store>
__device__ __forceinline__ void cta_pass(int log2n, int log2H, const Load& load, const Store& store) {
  const int log2s = log2H - kR + 1;
  const int s = 1 << log2s, items = 1 << (log2n - kR);
  for (int q = threadIdx.x; q < items; q += blockDim.x) {
    const int o = q & (s - 1);
    const int base = ((q >> log2s) << (log2H + 1)) + o;  // block of 2H, offset o
    float2 v[1 << kR];
    load(base, s, v);
    float2 wo[kR];
#pragma unroll
    for (int t = 0; t < kR; ++t) wo[t] = twiddle_dir<kInverse>(o, log2H - t + 1);  // W_{2h_t}^o
    if constexpr (kDit) radix_dit<kR, kInverse>(v, wo);
    else radix_dif<kR, kInverse>(v, wo);
    store(base, s, v);
  }
}

template <bool kInverse, bool kDit, class Load, class Store>
__device__ __forceinline__ void cta_pass_dispatch(int log2n, int log2H, int r, const Load& load, const Store& store) {
  switch (r) {
    case 1: cta_pass<1, kInverse, kDit>(log2n, log2H, load, store); break;
    case 2: cta_pass<2, kInverse, kDit>(log2n, log2H, load, store); break;
    case 3: cta_pass<3, kInverse, kDit>(log2n, log2H, load, store); break;
    default: cta_pass<4, kInverse, kDit>(log2n, log2H, load, store); break;
  }
}

// ---------------------------------------------------------------------------------------------
// The CTA warp pass: the 8 smallest stages (h = min(C, 256)/2 .. 1) of every 256-point block,
// C = 2^log2c (stages with h >= C are skipped: 256/C independent transforms per block). Half warp
// lane / 16 of a warp owns the block blk; with r = lane % 16 its lanes hold the block as
//   layout A: v[m] = x[blk + r + 16 m]   stages h = 128 .. 16 pair registers m, m + h/16
//   layout B: v[m] = x[blk + 16 r + m]   stages h = 8 .. 1 pair registers m, m + h
// one transpose through shared memory apart. Layout A's half-warp accesses are 16 consecutive
// points; layout B's are 16 points 16 apart, which swz spreads over the 16 bank pairs.

// The four stages of one layout, h = 2^kShift * M for M = 8, 4, 2, 1 (DIF; the reverse for
// DIT, the twiddle then on the second input), skipping h >= C. With p = blk + r + 16 m (layout A,
// kShift = 4) the twiddle W_{2h}^(p mod h) is W_{2h}^r * W_{2M}^(m mod M); with p = blk + 16 r + m
// (layout B, kShift = 0) it is W_{2M}^(m mod M), exactly 1 for m mod M = 0.
template <bool kInverse, bool kDit, int kShift>
__device__ __forceinline__ void block_stages(float2 (&v)[16], int log2c, int r) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int lm = kDit ? i : 3 - i, M = 1 << lm;
    if (kShift + lm >= log2c) continue;
    const float2 wr = kShift ? twiddle_dir<kInverse>(r, kShift + lm + 1) : make_float2(1.f, 0.f);
#pragma unroll
    for (int m = 0; m < 16; ++m) {
      if (m & M) continue;
      const int c = m & (M - 1);
      const bool unit = kShift == 0 && c == 0;
      const float2 w = c == 0 ? wr : kShift ? cmul(wr, root16<kInverse>(c * 8 / M)) : root16<kInverse>(c * 8 / M);
      if constexpr (kDit) {
        const float2 a = v[m], b = unit ? v[m + M] : cmul(v[m + M], w);
        v[m] = cadd(a, b);
        v[m + M] = csub(a, b);
      } else {
        const float2 a = v[m], b = v[m + M];
        v[m] = cadd(a, b);
        v[m + M] = unit ? csub(a, b) : cmul(csub(a, b), w);
      }
    }
  }
}

// The warp pass over all 256-point blocks of the data (or the whole of it when n < 256); points
// past n (n < 512) read as zero and are not written.
template <bool kInverse, bool kDit, bool kSwizzle>
__device__ __forceinline__ void cta_warp_passes(float2* data, int log2n) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5, r = lane & 15;
  const int n = 1 << log2n, log2c = log2n < kBlockLog2 ? log2n : kBlockLog2;
  constexpr int kWarpSpan = 2 << kBlockLog2;  // a block per half warp
  for (int base = warp * kWarpSpan; base < n; base += nwarps * kWarpSpan) {
    const int blk = base + ((lane >> 4) << kBlockLog2);
    float2 v[16];
    // Layout A (b = false) or B (b = true): load, or store back.
    const auto at = [&](bool b, int m) { return b ? blk + 16 * r + m : blk + r + 16 * m; };
    const auto load = [&](bool b) {
#pragma unroll
      for (int m = 0; m < 16; ++m) v[m] = at(b, m) < n ? data[swz<kSwizzle>(at(b, m), log2n)] : make_float2(0.f, 0.f);
    };
    const auto store = [&](bool b) {
#pragma unroll
      for (int m = 0; m < 16; ++m)
        if (at(b, m) < n) data[swz<kSwizzle>(at(b, m), log2n)] = v[m];
    };
    // DIF: layout A (the larger strides) first; DIT: layout B first.
    load(kDit);
    if constexpr (kDit) block_stages<kInverse, true, 0>(v, log2c, r);
    else block_stages<kInverse, false, 4>(v, log2c, r);
    store(kDit);
    __syncwarp();
    load(!kDit);
    if constexpr (kDit) block_stages<kInverse, true, 4>(v, log2c, r);
    else block_stages<kInverse, false, 0>(v, log2c, r);
    store(!kDit);
  }
}

// The CTA passes cover the stages above the warp pass in passes of 4 from the top, the remainder
// last (DIF; the DIT runs them in reverse): the first DIF pass, which may read global memory
// (cta_fft_dif_load), and the last DIT pass, which may write it (cta_fft_dit_store), then move
// 16 points per item whenever there are 4 stages or more, 16 loads in flight per thread.
__device__ __forceinline__ int cta_stage_count(int log2n) { return log2n > kBlockLog2 ? log2n - kBlockLog2 : 0; }

__device__ __forceinline__ int bit_reverse(int i, int log2n) {
  return log2n == 0 ? 0 : int(__brev(unsigned(i)) >> (32 - log2n));
}

// ---------------------------------------------------------------------------------------------
// Public CTA-cooperative transforms. Contract (all of them): every thread of the block calls
// it with the same arguments; blockDim.x is a multiple of 32; n = 2^log2n with 0 <= log2n and
// n float2 at `data` in shared memory (layout: swz<kSwizzle>); it begins and ends with
// __syncthreads(), so the caller may write the data just before and read it just after.
// Unnormalised: forward computes X[k] = sum_j x[j] exp(-2*pi*i*jk/n), kInverse uses exp(+...).

// The CTA passes over stages [from, to) (counted from the top stage, pass boundaries multiples
// of 4), in place in data, each followed by a barrier: DIF top down, DIT bottom up.
template <bool kInverse, bool kDit, bool kSwizzle>
__device__ __forceinline__ void cta_passes(float2* data, int log2n, int from, int to) {
  const SmemLoad<kSwizzle> ld{data, log2n};
  const SmemStore<kSwizzle> st{data, log2n};
  if constexpr (!kDit) {
    for (int start = from; start < to; start += kPassLog2) {
      const int r = to - start < kPassLog2 ? to - start : kPassLog2;
      cta_pass_dispatch<kInverse, false>(log2n, log2n - 1 - start, r, ld, st);
      __syncthreads();
    }
  } else {
    for (int end = to; end > from;) {
      const int start = (end - 1) / kPassLog2 * kPassLog2;
      cta_pass_dispatch<kInverse, true>(log2n, log2n - 1 - start, end - start, ld, st);
      __syncthreads();
      end = start;
    }
  }
}

// Natural order in, bit-reversed order out: afterwards data[swz(p)] holds X[bit_reverse(p)].
template <bool kInverse, bool kSwizzle = false>
__device__ void cta_fft_dif(float2* data, int log2n) {
  __syncthreads();
  cta_passes<kInverse, false, kSwizzle>(data, log2n, 0, cta_stage_count(log2n));
  cta_warp_passes<kInverse, false, kSwizzle>(data, log2n);
  __syncthreads();
}

// cta_fft_dif taking its input from load(base, s, v) (v[m] = element base + m*s for the 2^r
// elements of an item: a generic callable) instead of data: the load is fused into the first
// pass, so that no pass over shared memory only copies, and one warp's loads are in flight while
// others compute. It does not begin with a barrier: the caller's last use of data must be
// behind one.
template <bool kInverse, bool kSwizzle, class Load>
__device__ void cta_fft_dif_load(float2* data, int log2n, Load load) {
  const int cta_stages = cta_stage_count(log2n), r = cta_stages < kPassLog2 ? cta_stages : kPassLog2;
  const SmemStore<kSwizzle> to_smem{data, log2n};
  if (r == 0) {  // no CTA pass: a plain load
    for (int i = threadIdx.x; i < (1 << log2n); i += blockDim.x) {
      float2 v[1];
      load(i, 0, v);
      to_smem(i, 0, v);
    }
  } else {
    cta_pass_dispatch<kInverse, false>(log2n, log2n - 1, r, load, to_smem);
  }
  __syncthreads();
  cta_passes<kInverse, false, kSwizzle>(data, log2n, r, cta_stages);
  cta_warp_passes<kInverse, false, kSwizzle>(data, log2n);
  __syncthreads();
}

// Bit-reversed order in (data[swz(p)] = x[bit_reverse(p)]), natural order out.
template <bool kInverse, bool kSwizzle = false>
__device__ void cta_fft_dit(float2* data, int log2n) {
  __syncthreads();
  cta_warp_passes<kInverse, true, kSwizzle>(data, log2n);
  __syncthreads();
  cta_passes<kInverse, true, kSwizzle>(data, log2n, 0, cta_stage_count(log2n));
}

// cta_fft_dit handing its output to store(base, s, v) (v[m] = element base + m*s) instead of
// writing data: the consumer is fused into the last pass. It ends without a barrier (data then
// holds intermediate values the caller must not read).
template <bool kInverse, bool kSwizzle, class Store>
__device__ void cta_fft_dit_store(float2* data, int log2n, Store store) {
  __syncthreads();
  cta_warp_passes<kInverse, true, kSwizzle>(data, log2n);
  __syncthreads();
  const int cta_stages = cta_stage_count(log2n), r = cta_stages < kPassLog2 ? cta_stages : kPassLog2;
  cta_passes<kInverse, true, kSwizzle>(data, log2n, r, cta_stages);
  const SmemLoad<kSwizzle> from_smem{data, log2n};
  if (r == 0) {
    for (int i = threadIdx.x; i < (1 << log2n); i += blockDim.x) {
      float2 v[1];
      from_smem(i, 0, v);
      store(i, 0, v);
    }
  } else {
    cta_pass_dispatch<kInverse, true>(log2n, log2n - 1, r, from_smem, store);
  }
}

// In-place bit-reversal permutation (an involution: swap i and bit_reverse(i) once).
template <bool kSwizzle = false>
__device__ void cta_bit_reverse(float2* data, int log2n) {
  __syncthreads();
  for (int i = threadIdx.x; i < (1 << log2n); i += blockDim.x) {
    const int r = bit_reverse(i, log2n);
    if (i < r) {
      const int pi = swz<kSwizzle>(i, log2n), pr = swz<kSwizzle>(r, log2n);
      const float2 a = data[pi];
      data[pi] = data[pr];
      data[pr] = a;
    }
  }
  __syncthreads();
}

// Natural order in and out: the DIF transform and one bit-reversal pass.
template <bool kInverse, bool kSwizzle = false>
__device__ void cta_fft(float2* data, int log2n) {
  cta_fft_dif<kInverse, kSwizzle>(data, log2n);
  cta_bit_reverse<kSwizzle>(data, log2n);
}

// ---------------------------------------------------------------------------------------------
// Real signals. A real x of length N = 2n is packed as n complex z[j] = x[2j] + i*x[2j+1] (the
// same bytes: a float array read as float2). With Z = FFT_n(z) (unnormalised, forward) and
// X[k] = sum_t x[t] exp(-2*pi*i*kt/N), k = 0..n, the unnormalised rfft:
//   E[k] = (Z[k] + conj Z[n-k]) / 2,  O[k] = (Z[k] - conj Z[n-k]) / (2i),   (Z[n] := Z[0])
//   X[k] = E[k] + W_N^k O[k],  X[n-k] = conj(E[k] - W_N^k O[k]).

// In place, natural order: data[0..n-1] = Z (layout swz) in, data[0..n] = X out, data[n]
// unswizzled. Works for log2n >= 0 (n = 1: N = 2). Begins and ends with __syncthreads().
template <bool kSwizzle = false>
__device__ void cta_rfft_post(float2* data, int log2n) {
  __syncthreads();
  const int n = 1 << log2n;
  for (int k = threadIdx.x; k <= n / 2; k += blockDim.x) {
    if (k == 0) {
      const float2 z0 = data[swz<kSwizzle>(0, log2n)];
      data[swz<kSwizzle>(0, log2n)] = make_float2(z0.x + z0.y, 0.f);
      data[n] = make_float2(z0.x - z0.y, 0.f);
    } else {
      const int pk = swz<kSwizzle>(k, log2n), pn = swz<kSwizzle>(n - k, log2n);
      const float2 zk = data[pk], zn = cconj(data[pn]);
      const float2 e = make_float2(0.5f * (zk.x + zn.x), 0.5f * (zk.y + zn.y));
      const float2 d = csub(zk, zn);
      const float2 o = make_float2(0.5f * d.y, -0.5f * d.x);  // d / (2i)
      const float2 wo = cmul(twiddle(k, log2n + 1), o);
      data[pk] = cadd(e, wo);
      data[pn] = cconj(csub(e, wo));  // k = n/2: the same value as data[pk]
    }
  }
  __syncthreads();
}

// The inverse: data[0..n] = X (bins 0..n of a Hermitian spectrum; the imaginary parts of X[0]
// and X[n] are ignored, as every C2R transform does) in, data[0..n-1] = Z' out (layout swz),
//   Z'[k] = (X[k] + conj X[n-k]) + i * conj(W_N^k) * (X[k] - conj X[n-k]),
// so that the unnormalised inverse FFT_n of Z' gives u[2j] + i*u[2j+1] with
//   u[t] = sum_{k<N} Xfull[k] exp(+2*pi*i*kt/N) = N * torch.fft.irfft(X, N)[t]   (norm="backward"),
// i.e. the unnormalised inverse real DFT; multiply by 1/N for torch's default. rfft_post then
// irfft_pre returns 2*Z. Begins and ends with __syncthreads().
template <bool kSwizzle = false>
__device__ void cta_irfft_pre(float2* data, int log2n) {
  __syncthreads();
  const int n = 1 << log2n;
  for (int k = threadIdx.x; k <= n / 2; k += blockDim.x) {
    if (k == 0) {
      const float a = data[swz<kSwizzle>(0, log2n)].x, c = data[n].x;
      data[swz<kSwizzle>(0, log2n)] = make_float2(a + c, a - c);
    } else {
      const int pk = swz<kSwizzle>(k, log2n), pn = swz<kSwizzle>(n - k, log2n);
      const float2 xk = data[pk], xn = cconj(data[pn]);
      const float2 s = cadd(xk, xn);
      const float2 d = cmul(csub(xk, xn), cconj(twiddle(k, log2n + 1)));
      const float2 id = make_float2(-d.y, d.x);  // i * d
      data[pk] = cadd(s, id);
      data[pn] = cadd(cconj(s), make_float2(d.y, d.x));  // conj(s) + i*conj(d)
    }
  }
  __syncthreads();
}

}  // namespace mmm::fft
