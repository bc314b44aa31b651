// Entry points of the Hadamard transform on CUDA: one pass when a row fits one CTA's shared
// memory (up to 32768 elements where the device allows 128 KB per block, 16384 on GPUs with
// 99 KB; on sm_90 a row that would fill an SM alone on a cluster of two CTAs), else the segment
// pass into fp32 scratch and the column pass.
#include <cuda_runtime.h>

#include <algorithm>

#include "hadamard/hadamard_kernel.cuh"
#include "hadamard/params.h"

namespace mmm {
namespace {

// Longest power-of-two segment one CTA can hold on this device.
int64_t max_segment(int device) {
  int optin = 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  int64_t seg = HadamardTile::kMaxSegment;
  while (seg > HadamardTile::kRegisterOnly && seg * int64_t(sizeof(float)) > optin) seg /= 2;
  return seg;
}

constexpr int64_t kMaxColumnsFactor = 32;  // hadamard_columns_kernel instantiations: a <= 32

// Whether a row of m <= max_segment elements goes to a cluster of two CTAs (kPair), one half
// each: where its one CTA would leave no room on the SM for a second (32768 elements on an H100:
// 128 KB, and 1024 threads of 64 registers, the whole register file), so that nothing would
// overlap its loads with another row's work; and the device runs clusters with this build's
// sm_90 code (else the kernel would trap).
bool pair_rows(const HadamardParams& p, int device) {
  if (!p.split_rows || p.n_pow2 / 2 <= HadamardTile::kRegisterOnly) return false;
  int per_sm = 0;
  cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  return 2 * p.n_pow2 * int64_t(sizeof(float)) > per_sm &&
         runs_cluster_code<hadamard_segment_kernel<float, float, true>>(device);
}

// kPair: segs_per_row = 2, each row's segments on a cluster of two CTAs.
template <typename TI, typename TO, bool kPair = false>
cudaError_t launch_segments(const TI* in, int64_t in_rs, int64_t in_n, TO* out, int64_t out_rs, int64_t out_n,
                            int64_t rows, int64_t seg_len, int64_t segs_per_row, float scale, cudaStream_t stream) {
  const int threads = HadamardTile::threads(seg_len);
  const size_t smem = seg_len > HadamardTile::kRegisterOnly ? size_t(seg_len) * sizeof(float) : 0;
  auto kernel = hadamard_segment_kernel<TI, TO, kPair>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t segs = rows * segs_per_row;
  // A chunk moves as 16-byte loads and stores where every row start is 16-byte aligned (a
  // segment's is then too); element by element otherwise and at a row's ragged end.
  const bool vec_in = rows_aligned(in, in_rs, sizeof(TI)), vec_out = rows_aligned(out, out_rs, sizeof(TO));
  if constexpr (kPair) {  // an even grid: a cluster's two CTAs take a row's two segments
    const ClusterLaunch launch(unsigned(std::min<int64_t>(segs, (int64_t(1) << 30))), unsigned(threads), smem, stream, 2);
    const cudaError_t err = cudaLaunchKernelEx(&launch.config, kernel, in, in_rs, in_n, out, out_rs, out_n, rows,
                                               seg_len, segs_per_row, scale, vec_in, vec_out);
    return err != cudaSuccess ? err : cudaGetLastError();
  } else {
    const unsigned grid = unsigned(std::min<int64_t>(segs, 0x7fffffff));
    kernel<<<grid, threads, smem, stream>>>(in, in_rs, in_n, out, out_rs, out_n, rows, seg_len, segs_per_row, scale,
                                            vec_in, vec_out);
    return cudaGetLastError();
  }
}

template <int kA, typename TO>
cudaError_t launch_columns(const float* ws, int64_t rows, int64_t b, TO* out, int64_t out_rs, int64_t n, float scale,
                           cudaStream_t stream) {
  const unsigned grid = unsigned(std::min<int64_t>(ceil_div(rows * b, 256), 0x7fffffff));
  hadamard_columns_kernel<kA, TO><<<grid, 256, 0, stream>>>(ws, rows, b, out, out_rs, n, scale);
  return cudaGetLastError();
}

template <typename T>
cudaError_t run(const HadamardParams& p, void* workspace, cudaStream_t stream, int device) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const float scale = float(p.scale);
  const int64_t seg = max_segment(device);
  if (p.n_pow2 <= seg && pair_rows(p, device))
    return launch_segments<T, T, true>(x, p.x_row_stride, p.n, y, p.y_row_stride, p.n, p.rows, p.n_pow2 / 2, 2, scale,
                                       stream);
  if (p.n_pow2 <= seg)
    return launch_segments<T, T>(x, p.x_row_stride, p.n, y, p.y_row_stride, p.n, p.rows, p.n_pow2, 1, scale, stream);
  const int64_t a = p.n_pow2 / seg;
  float* ws = static_cast<float*>(workspace);
  cudaError_t err = launch_segments<T, float>(x, p.x_row_stride, p.n, ws, p.n_pow2, p.n_pow2, p.rows, seg, a, 1.f, stream);
  if (err != cudaSuccess) return err;
  switch (a) {
    case 2: return launch_columns<2, T>(ws, p.rows, seg, y, p.y_row_stride, p.n, scale, stream);
    case 4: return launch_columns<4, T>(ws, p.rows, seg, y, p.y_row_stride, p.n, scale, stream);
    case 8: return launch_columns<8, T>(ws, p.rows, seg, y, p.y_row_stride, p.n, scale, stream);
    case 16: return launch_columns<16, T>(ws, p.rows, seg, y, p.y_row_stride, p.n, scale, stream);
    case 32: return launch_columns<32, T>(ws, p.rows, seg, y, p.y_row_stride, p.n, scale, stream);
    default: return cudaErrorInvalidValue;  // the glue bounds n
  }
}

}  // namespace

const char* hadamard_cuda_path(const HadamardParams& p, int device) {
  return p.n_pow2 > max_segment(device) ? "2-pass" : pair_rows(p, device) ? "cluster x2" : "1 CTA";
}

size_t hadamard_cuda_workspace_bytes(const HadamardParams& p, int device) {
  return p.n_pow2 <= max_segment(device) ? 0 : size_t(p.rows) * size_t(p.n_pow2) * sizeof(float);
}

const char* launch_hadamard(const HadamardParams& p, void* workspace, void* stream_ptr) {
  if (p.rows == 0) return nullptr;
  int device = 0;
  cudaGetDevice(&device);
  if (p.n_pow2 > max_segment(device) * kMaxColumnsFactor) return "hadamard_transform: row too long for this GPU";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  cudaError_t err = cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: err = run<float>(p, workspace, stream, device); break;
    case DType::kFloat16: err = run<__half>(p, workspace, stream, device); break;
    case DType::kBFloat16: err = run<__nv_bfloat16>(p, workspace, stream, device); break;
    default: return "hadamard_transform: no CUDA kernel for float64";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
