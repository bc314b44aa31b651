// Entry points of the FFT on CUDA: the warp kernel for n <= 512, one CTA per row up to what one
// CTA's shared memory holds (16384 points with 128 KB per block, 8192 on GPUs with 99 KB; two
// CTAs per row where one would fill an SM's shared memory alone), and the two-pass four-step
// path (column pass into a workspace, then per-CTA rows) beyond that.
#include <cuda_runtime.h>

#include <algorithm>

#include "fft/fft_kernel.cuh"
#include "fft/params.h"

namespace mmm {
namespace {

int max_cta_log2(int device) {
  int optin = 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  int l = FftTile::kMaxLog2Cta;
  while (l > fft::kWarpLog2 && (int64_t(sizeof(float2)) << l) > optin) --l;
  return l;
}

// Whether a row of 2^log2n points that one CTA holds goes to two CTAs instead: when its CTA
// would leave no room on the SM for a second one (16384 points on an H100 or A100, 8192 on GPUs
// with 100 KB per SM), so that nothing overlaps its loads with another row's work. rfft stays
// whole (its post-processing pairs bins k and n - k).
bool split_row(const FftParams& p, int device) {
  if (!p.split_rows || p.kind == FftKind::kR2C || p.log2n - 1 <= fft::kWarpLog2) return false;
  int per_sm = 0;
  cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  return 2 * (int64_t(sizeof(float2)) << p.log2n) > per_sm;
}

unsigned grid_for(int64_t work, int64_t per_block) {
  return unsigned(std::clamp<int64_t>(ceil_div(work, per_block), 1, int64_t(1) << 20));
}

template <FftKind kKind, bool kInverse>
cudaError_t launch_warp(const FftParams& p, const float2* x, int64_t xs, float2* y, int64_t ys, cudaStream_t stream) {
  const int64_t tiles = ceil_div(p.rows, fft::kWarpPoints >> p.log2n);
  fft_warp_kernel<kKind, kInverse><<<grid_for(tiles, FftTile::kWarpKernelWarps), FftTile::kWarpKernelWarps * 32, 0,
                                     stream>>>(x, xs, y, ys, p.rows, p.log2n, float(p.scale));
  return cudaGetLastError();
}

template <FftKind kLoad, bool kInverse, bool kRealPost, bool kSplit2 = false>
cudaError_t launch_cta(const float2* x, int64_t xs, float2* y, int64_t ys, int64_t subrows, int a, int log2n, float scale,
                       cudaStream_t stream) {
  const int threads = int(std::clamp<int64_t>((int64_t(1) << log2n) / FftTile::kPointsPerThread, 32, FftTile::kMaxThreads));
  const size_t smem = sizeof(float2) << log2n;
  auto kernel = fft_cta_kernel<kLoad, kInverse, kRealPost, kSplit2>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid_for(subrows, 1), threads, smem, stream>>>(x, xs, y, ys, subrows, a, log2n, scale);
  return cudaGetLastError();
}

template <FftKind kLoad, bool kInverse>
cudaError_t launch_columns(int log2a, const float2* x, int64_t xs, float2* ws, int64_t rows, int log2n,
                           cudaStream_t stream) {
  const unsigned grid = grid_for(rows << (log2n - log2a), FftTile::kColumnThreads);
  const int t = FftTile::kColumnThreads;
  switch (log2a) {
    case 1: fft_column_kernel<1, kLoad, kInverse><<<grid, t, 0, stream>>>(x, xs, ws, rows, log2n); break;
    case 2: fft_column_kernel<2, kLoad, kInverse><<<grid, t, 0, stream>>>(x, xs, ws, rows, log2n); break;
    case 3: fft_column_kernel<3, kLoad, kInverse><<<grid, t, 0, stream>>>(x, xs, ws, rows, log2n); break;
    case 4: fft_column_kernel<4, kLoad, kInverse><<<grid, t, 0, stream>>>(x, xs, ws, rows, log2n); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// kKind, inverse fixed: picks the path. Strides in float2.
template <FftKind kKind, bool kInverse>
cudaError_t run(const FftParams& p, const float2* x, int64_t xs, float2* y, int64_t ys, float2* ws,
                cudaStream_t stream, int device) {
  const float scale = float(p.scale);
  if (p.log2n <= fft::kWarpLog2) return launch_warp<kKind, kInverse>(p, x, xs, y, ys, stream);
  const int lmax = max_cta_log2(device);
  constexpr bool kPost = kKind == FftKind::kR2C;
  if constexpr (!kPost) {
    if (p.log2n <= lmax && split_row(p, device))  // CTAs 2r, 2r + 1: row r's halves, side by side
      return launch_cta<kKind, kInverse, false, true>(x, xs, y, ys, p.rows * 2, 2, p.log2n - 1, scale, stream);
  }
  if (p.log2n <= lmax) return launch_cta<kKind, kInverse, kPost>(x, xs, y, ys, p.rows, 1, p.log2n, scale, stream);
  // Four-step: n = a * b with b = the CTA maximum.
  const int log2a = p.log2n - lmax;
  cudaError_t err = launch_columns<kKind, kInverse>(log2a, x, xs, ws, p.rows, p.log2n, stream);
  if (err != cudaSuccess) return err;
  const int a = 1 << log2a;
  err = launch_cta<FftKind::kC2C, kInverse, false>(ws, int64_t(1) << lmax, y, ys, p.rows * a, a, lmax,
                                                   kPost ? 1.f : scale, stream);
  if (err != cudaSuccess || !kPost) return err;
  rfft_post_kernel<<<grid_for(p.rows * ((int64_t(1) << p.log2n) / 2 + 1), 256), 256, 0, stream>>>(y, ys, p.rows,
                                                                                                   p.log2n, scale);
  return cudaGetLastError();
}

}  // namespace

int64_t fft_cuda_max_cta_points(int device) { return int64_t(1) << max_cta_log2(device); }

int64_t fft_cuda_max_points(int device) { return fft_cuda_max_cta_points(device) << FftTile::kMaxLog2Columns; }

const char* fft_cuda_path(const FftParams& p, int device) {
  if (p.log2n <= fft::kWarpLog2) return "warp";
  if (p.log2n > max_cta_log2(device)) return "four-step";
  return split_row(p, device) ? "cta x2" : "cta";
}

size_t fft_cuda_workspace_bytes(const FftParams& p, int device) {
  return p.log2n <= max_cta_log2(device) ? 0 : size_t(p.rows) * (size_t(sizeof(float2)) << p.log2n);
}

const char* launch_fft(const FftParams& p, void* workspace, void* stream_ptr) {
  if (p.rows == 0) return nullptr;
  if (p.fp64) return "fft: no CUDA kernel for complex128 / float64";
  int device = 0;
  cudaGetDevice(&device);
  if ((int64_t(1) << p.log2n) > fft_cuda_max_points(device)) return "fft: transform too long for this GPU";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  auto* ws = static_cast<float2*>(workspace);
  const auto* x = static_cast<const float2*>(p.x);
  auto* y = static_cast<float2*>(p.y);
  cudaError_t err = cudaErrorInvalidValue;
  switch (p.kind) {
    case FftKind::kC2C:
      err = p.inverse ? run<FftKind::kC2C, true>(p, x, p.x_row_stride, y, p.y_row_stride, ws, stream, device)
                      : run<FftKind::kC2C, false>(p, x, p.x_row_stride, y, p.y_row_stride, ws, stream, device);
      break;
    case FftKind::kR2C:  // real rows as complex pairs (the glue makes the stride even)
      err = run<FftKind::kR2C, false>(p, x, p.x_row_stride / 2, y, p.y_row_stride, ws, stream, device);
      break;
    case FftKind::kC2R:  // real output rows of 2n as n pairs
      err = run<FftKind::kC2R, true>(p, x, p.x_row_stride, y, p.y_row_stride / 2, ws, stream, device);
      break;
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
