// FFT kernels along rows (fp32 / complex64), built on core/fft.cuh. One HBM read and one write
// per point whenever a row fits one CTA's shared memory.
//
//   fft_warp_kernel    n <= 512: a warp transforms 512 points at once (512/n rows) in registers
//                      (16 per lane) and shuffles; one exchange through 4 KB of shared memory per
//                      warp turns the bit-reversed result into natural order for a coalesced store.
//   fft_cta_kernel     512 < n <= what one CTA's shared memory holds: cta_fft_dif_load
//                      transforms the row in (swizzled) shared memory, its first pass reading the
//                      row from global memory, and the store reads the bit-reversed positions
//                      (rfft: two of them per output bin).
//   fft_column_kernel  longer rows, n = a*b (a <= 16), first pass of the four-step FFT: a thread
//                      per (row, column i2) does the length-a DFT over x[i1*b + i2] in registers
//                      and the twiddle W_n^(i2*k1), writing ws[row][k1][i2] (coalesced both ways);
//                      then fft_cta_kernel transforms each ws[row][k1] (length b) and stores bin
//                      k1 + a*k2 (the four-step transpose folded into the store).
//   fft_cta_kernel<..., kSplit2>  a row that fits one CTA but would fill an SM's shared memory
//                      alone (16384 points on an H100: 128 KB) goes to two CTAs of half the
//                      size: the four-step with a = 2, its column pass fused into their loads
//                      (CTA k1 of the row loads x[j] and x[j + n/2], takes their sum, k1 = 0, or
//                      difference times W_n^j, k1 = 1, and stores bins k1 + 2k). Two or three CTAs
//                      then share an SM and one's loads overlap another's passes and stores; the
//                      row is read twice, by two CTAs launched side by side (the second read
//                      mostly from L2), and each CTA writes every other bin (8 bytes of each
//                      16, which the row's other CTA completes in L2).
//   rfft_post_kernel   the rfft post-processing of the two-pass path, in place on the output.
// Real signals ride on the complex transform (core/fft.cuh): rfft reads the real row as n
// complex pairs; irfft applies irfft_pre while loading and stores the complex result as pairs.
#pragma once
#include "core/common.h"
#include "core/fft.cuh"
#include "fft/params.h"

namespace mmm {

struct FftTile {
  static constexpr int kWarpKernelWarps = 4;     // fft_warp_kernel: 4 warps x 4 KB shared memory
  // fft_cta_kernel: 2 CTA-pass items (32 points) per thread, at most 256 threads, <= 128
  // registers: at 4096 / 8192 points two CTAs fit an SM (by registers; 512 threads of ~113
  // registers would allow one), so one CTA's loads overlap another's shuffles.
  static constexpr int kMaxThreads = 256;
  static constexpr int kPointsPerThread = 32;
  static constexpr int kColumnThreads = 256;
  static constexpr int kMaxLog2Columns = 4;      // a <= 16: core/fft.cuh's constant roots are 16th roots
  static constexpr int kMaxLog2Cta = 14;         // 16384 points = 128 KB of shared memory
};
static_assert(fft::kWarpPoints == 512, "fft_warp_kernel assumes 512-point warp tiles");

// Input point j (0 <= j < n) of transform row `row`: the row itself, or for kC2R the row after
// irfft_pre (core/fft.cuh: Z'[k] = (X[k] + conj X[n-k]) + i conj(W_{2n}^k) (X[k] - conj X[n-k]),
// X[0] and X[n] real parts only), which reads bins j and n - j of the n + 1.
template <FftKind kKind>
__device__ __forceinline__ float2 load_point(const float2* __restrict__ x, int64_t xs, int64_t row, int j,
                                             int log2n) {
  const float2* r = x + row * xs;
  if constexpr (kKind != FftKind::kC2R) {
    return r[j];
  } else {
    const int n = 1 << log2n;
    if (j == 0) {  // a lane per row reads its DC and Nyquist bins: many rows per warp when n is tiny
      const float a = r[0].x, c = r[n].x;  // known uncoalesced (above)
      return make_float2(a + c, a - c);
    }
    const float2 xk = r[j], xn = fft::cconj(r[n - j]);
    const float2 s = fft::cadd(xk, xn);
    const float2 d = fft::cmul(fft::csub(xk, xn), fft::cconj(fft::twiddle(j, log2n + 1)));
    return make_float2(s.x - d.y, s.y + d.x);  // s + i*d
  }
}

// rfft bin k (0 <= k <= n) from zk = Z[k mod n] and znk = Z[(n-k) mod n] (core/fft.cuh's rfft_post).
__device__ __forceinline__ float2 rfft_bin(float2 zk, float2 znk, int k, int log2n) {
  const float2 zn = fft::cconj(znk);
  const float2 e = make_float2(0.5f * (zk.x + zn.x), 0.5f * (zk.y + zn.y));
  const float2 o = make_float2(0.5f * (zk.y - zn.y), -0.5f * (zk.x - zn.x));  // (zk - zn) / (2i)
  return fft::cadd(e, fft::cmul(fft::twiddle(k, log2n + 1), o));
}

__device__ __forceinline__ float2 scaled(float2 v, float s) { return make_float2(v.x * s, v.y * s); }

// x: rows of complex points (kR2C: the real row as pairs), row stride xs; y: kC2C / kC2R rows of
// n complex (pairs), kR2C rows of n + 1 bins, row stride ys; all strides in float2.
template <FftKind kKind, bool kInverse>
__global__ void __launch_bounds__(FftTile::kWarpKernelWarps * 32)
    fft_warp_kernel(const float2* __restrict__ x, int64_t xs, float2* __restrict__ y, int64_t ys, int64_t rows,
                    int log2n, float scale) {
  constexpr int kWarps = FftTile::kWarpKernelWarps;
  __shared__ float2 sbuf[kWarps][fft::kWarpPoints];  // (warp, 512): one tile, swizzled
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float2* buf = sbuf[warp];
  const int n = 1 << log2n, rows_per_tile = fft::kWarpPoints >> log2n;
  const int64_t tiles = ceil_div(rows, rows_per_tile);
  for (int64_t tile = int64_t(blockIdx.x) * kWarps + warp; tile < tiles; tile += int64_t(gridDim.x) * kWarps) {
    const int64_t row0 = tile * rows_per_tile;
    float2 v[fft::kPerLane];
#pragma unroll
    for (int m = 0; m < fft::kPerLane; ++m) {
      const int p = lane + 32 * m;
      const int64_t r = row0 + (p >> log2n);
      v[m] = r < rows ? load_point<kKind>(x, xs, r, p & (n - 1), log2n) : make_float2(0.f, 0.f);
    }
    fft::warp_dif<kInverse>(v, log2n, lane);
#pragma unroll
    for (int m = 0; m < fft::kPerLane; ++m) {
      const int p = lane + 32 * m, c = p & (n - 1);
      buf[fft::swz<true>((p - c) | fft::bit_reverse(c, log2n), log2n)] = v[m];  // natural order
    }
    __syncwarp();
    if constexpr (kKind == FftKind::kR2C) {
      const int per_row = n + 1;
      for (int t = lane; t < rows_per_tile * per_row; t += 32) {
        const int rr = t / per_row, k = t - rr * per_row;
        const int64_t r = row0 + rr;
        if (r < rows) {
          const float2 zk = buf[fft::swz<true>(rr * n + (k & (n - 1)), log2n)];
          const float2 znk = buf[fft::swz<true>(rr * n + ((n - k) & (n - 1)), log2n)];
          y[r * ys + k] = scaled(rfft_bin(zk, znk, k, log2n), scale);
        }
      }
    } else {
#pragma unroll
      for (int m = 0; m < fft::kPerLane; ++m) {
        const int p = lane + 32 * m;
        const int64_t r = row0 + (p >> log2n);
        if (r < rows) y[r * ys + (p & (n - 1))] = scaled(buf[fft::swz<true>(p, log2n)], scale);
      }
    }
    __syncwarp();  // the next tile overwrites buf
  }
}

// One CTA per transform ("sub-row") s of n = 2^log2n points: input x + s*xs; output row s / a,
// bin k stored at y[(s / a) * ys + (s % a) + a*k] (a = 1: the plain row; a > 1: the four-step's
// second pass). kRealPost (a = 1 only): store the n + 1 rfft bins instead of the n points.
// kSplit2 (a = 2): sub-row s is half k1 = s % 2 of row s / 2 of x, a row of 2n points (x + row*xs),
// its radix-2 column pass done on load (header comment).
// Dynamic shared memory: n float2 (core/fft.cuh swizzled layout).
template <FftKind kLoad, bool kInverse, bool kRealPost, bool kSplit2 = false>
__global__ void __launch_bounds__(FftTile::kMaxThreads, 2)
    fft_cta_kernel(const float2* __restrict__ x, int64_t xs, float2* __restrict__ y, int64_t ys, int64_t subrows,
                   int a, int log2n, float scale) {
#ifdef MMM_FFT_HOST_EMULATION
  float2* smem = emu_dynamic_smem();  // tests/emulate/cuda_on_cpu.h
#else
  extern __shared__ float2 smem[];  // (n,) swizzled
#endif
  static_assert(!(kSplit2 && kRealPost), "a split row stores complex bins (rfft's post-processing needs them all)");
  const int n = 1 << log2n;
  for (int64_t s = blockIdx.x; s < subrows; s += gridDim.x) {
    const int64_t row = s / a;
    const int k1 = int(s - row * a);
    // The load is the first CTA pass's (16 points per item from n = 4096 on: 16 loads in flight
    // per thread, where one CTA fills an SM at the largest n): no pass that only copies.
    fft::cta_fft_dif_load<kInverse, true>(smem, log2n, [=](int base, int stride, auto& v) {
      constexpr int kN = sizeof(v) / sizeof(v[0]);
      if constexpr (kSplit2) {
        // Both halves' loads first: 2 x kN in flight per thread.
        float2 hi[kN];
#pragma unroll
        for (int m = 0; m < kN; ++m) {
          v[m] = load_point<kLoad>(x, xs, row, base + m * stride, log2n + 1);
          hi[m] = load_point<kLoad>(x, xs, row, base + m * stride + n, log2n + 1);
        }
#pragma unroll
        for (int m = 0; m < kN; ++m)  // j < n <= 2^23: the twiddle index is exact
          v[m] = k1 == 0 ? fft::cadd(v[m], hi[m])
                         : fft::cmul(fft::csub(v[m], hi[m]), fft::twiddle_dir<kInverse>(base + m * stride, log2n + 1));
      } else {
#pragma unroll
        for (int m = 0; m < kN; ++m) v[m] = load_point<kLoad>(x, xs, s, base + m * stride, log2n);
      }
    });  // ends with __syncthreads()
    float2* out = y + row * ys + k1;
    if constexpr (kRealPost) {
      // Z[n-k] of 16 consecutive k: 15 from one aligned group of 16 and one from the next,
      // which swz (its bits-4..7 term, for the warp pass) mostly puts on a bank pair the 15 use.
      for (int k = threadIdx.x; k <= n; k += blockDim.x) {
        const float2 zk = smem[fft::swz<true>(fft::bit_reverse(k & (n - 1), log2n), log2n)];
        const float2 znk = smem[fft::swz<true>(fft::bit_reverse((n - k) & (n - 1), log2n), log2n)];  // known bank conflict: 2-way (above)
        out[k] = scaled(rfft_bin(zk, znk, k, log2n), scale);
      }
    } else {
      // a > 1 (the four-step's second pass): bins a apart, each lane 8 bytes of its own sector.
      // Coalesced stores need the first pass to write transposed (not done yet).
      for (int k = threadIdx.x; k < n; k += blockDim.x) {
        const float2 v = scaled(smem[fft::swz<true>(fft::bit_reverse(k, log2n), log2n)], scale);
        out[int64_t(k) * a] = v;  // known uncoalesced for a > 1 (above)
      }
    }
    __syncthreads();  // the next sub-row's load overwrites smem
  }
}

__host__ __device__ constexpr int reverse_bits(int v, int bits) {
  int r = 0;
  for (int b = 0; b < bits; ++b) r |= ((v >> b) & 1) << (bits - 1 - b);
  return r;
}

// First pass of the four-step FFT of n = a*b points, a = 2^kLog2A: for each (row, i2 < b),
// ws[row][k1][i2] = W_n^(i2*k1) * sum_i1 x[i1*b + i2] W_a^(i1*k1) (conjugate twiddles for the
// inverse); ws rows are dense (a*b float2).
template <int kLog2A, FftKind kLoad, bool kInverse>
__global__ void __launch_bounds__(FftTile::kColumnThreads)
    fft_column_kernel(const float2* __restrict__ x, int64_t xs, float2* __restrict__ ws, int64_t rows, int log2n) {
  constexpr int kA = 1 << kLog2A;
  const int log2b = log2n - kLog2A, b = 1 << log2b;
  const int64_t total = rows << log2b;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx >> log2b;
    const int i2 = int(idx & (b - 1));
    float2 v[kA];
#pragma unroll
    for (int i1 = 0; i1 < kA; ++i1) v[i1] = load_point<kLoad>(x, xs, row, i1 * b + i2, log2n);
    float2 ones[kLog2A];
#pragma unroll
    for (int t = 0; t < kLog2A; ++t) ones[t] = make_float2(1.f, 0.f);  // stride 1, offset 0
    fft::radix_dif<kLog2A, kInverse>(v, ones);                        // v[m] = bin reverse(m)
    float2* dst = ws + row * (int64_t(kA) << log2b) + i2;
#pragma unroll
    for (int m = 0; m < kA; ++m) {
      const int k1 = reverse_bits(m, kLog2A);
      const float2 w = fft::twiddle_dir<kInverse>(i2 * k1, log2n);  // i2*k1 < n <= 2^24: exact
      dst[int64_t(k1) << log2b] = k1 == 0 ? v[m] : fft::cmul(v[m], w);
    }
  }
}

// rfft post-processing in place on rows of n + 1 slots holding Z[0..n-1]: the pair (k, n - k).
__global__ void __launch_bounds__(256)
    rfft_post_kernel(float2* __restrict__ y, int64_t ys, int64_t rows, int log2n, float scale) {
  const int n = 1 << log2n, pairs = n / 2 + 1;
  const int64_t total = rows * pairs;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / pairs;
    const int k = int(idx - row * pairs);
    float2* r = y + row * ys;
    if (k == 0) {
      const float2 z0 = r[0];
      r[0] = make_float2((z0.x + z0.y) * scale, 0.f);
      r[n] = make_float2((z0.x - z0.y) * scale, 0.f);
    } else {
      const float2 zk = r[k], znk = r[n - k];
      const float2 xk = rfft_bin(zk, znk, k, log2n), xnk = rfft_bin(znk, zk, n - k, log2n);
      r[k] = scaled(xk, scale);
      r[n - k] = scaled(xnk, scale);
    }
  }
}

}  // namespace mmm
