// Entry points of the Hadamard transform on CUDA: one pass when a row fits one CTA's shared
// memory (up to 32768 elements where the device allows 128 KB per block, 16384 on GPUs with
// 99 KB), else the segment pass into fp32 scratch and the column pass.
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

template <typename TI, typename TO>
cudaError_t launch_segments(const TI* in, int64_t in_rs, int64_t in_n, TO* out, int64_t out_rs, int64_t out_n,
                            int64_t rows, int64_t seg_len, int64_t segs_per_row, float scale, cudaStream_t stream) {
  const int threads = HadamardTile::threads(seg_len);
  const size_t smem = seg_len > HadamardTile::kRegisterOnly ? size_t(seg_len) * sizeof(float) : 0;
  auto kernel = hadamard_segment_kernel<TI, TO>;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t segs = rows * segs_per_row;
  const unsigned grid = unsigned(std::min<int64_t>(segs, 0x7fffffff));
  // A chunk moves as 16-byte loads and stores where every row start is 16-byte aligned (a
  // segment's is then too); element by element otherwise and at a row's ragged end.
  const bool vec_in = rows_aligned(in, in_rs, sizeof(TI)), vec_out = rows_aligned(out, out_rs, sizeof(TO));
  kernel<<<grid, threads, smem, stream>>>(in, in_rs, in_n, out, out_rs, out_n, rows, seg_len, segs_per_row, scale,
                                          vec_in, vec_out);
  return cudaGetLastError();
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
