// Entry points of fftconv on CUDA. The kernels size themselves from the device's shared-memory
// limit per block (cudaDevAttrMaxSharedMemoryPerBlockOptin):
//   forward   one row's buffer, n = L/2 float2 = 4L bytes: fused in shared memory up to
//             N = 16384 where 128 KB fit (A100: 163 KB, H100: 227 KB), N = 8192 with 99 KB
//             (RTX 30/40); longer rows run the same kernels on per-CTA slots of global scratch
//             (the multi-kernel path: k's spectrum, the rows, each through L2 instead of shared
//             memory; correct for every N up to 2^20, slower).
//   backward  two buffers per row (g and v): both in shared memory up to 8L bytes, else the
//             first in shared memory and the second in global scratch, else both in scratch;
//             a task's running dk sums (4L + 8 bytes) in shared memory too where they fit after
//             both buffers, else in its dk_part slot (read and written for every row).
//   On sm_90 a row whose buffers would leave its CTA alone on an SM, or would not fit at all,
//   runs on a cluster of two CTAs holding half of them each (fftconv_{fwd,bwd}_split_kernel):
//   the forward at N = 16384, the backward at 8192 and 16384 on an H100.
// Launches: kspec (one CTA per channel), then fwd (one CTA per row) or bwd (one CTA per
// (channel, batch chunk)) + finalize (one CTA per channel: dk, dbias).
#include <cuda_runtime.h>

#include <algorithm>

#include "fftconv/fftconv_launch_template.cuh"
#include "fftconv/params.h"

namespace mmm {
namespace fftconv_launch {

// Defined in instantiations/fftconv_<dtype>.cu.
extern template cudaError_t launch_rows_fwd<float>(const FFTConvParams&, const Plan&, const float2*, float2*,
                                                   cudaStream_t);
extern template cudaError_t launch_rows_fwd<__half>(const FFTConvParams&, const Plan&, const float2*, float2*,
                                                    cudaStream_t);
extern template cudaError_t launch_rows_fwd<__nv_bfloat16>(const FFTConvParams&, const Plan&, const float2*, float2*,
                                                           cudaStream_t);
extern template cudaError_t launch_rows_bwd<float>(const FFTConvBwdParams&, const Plan&, const float2*, float2*,
                                                   float*, float2*, cudaStream_t);
extern template cudaError_t launch_rows_bwd<__half>(const FFTConvBwdParams&, const Plan&, const float2*, float2*,
                                                    float*, float2*, cudaStream_t);
extern template cudaError_t launch_rows_bwd<__nv_bfloat16>(const FFTConvBwdParams&, const Plan&, const float2*,
                                                           float2*, float*, float2*, cudaStream_t);

Plan::Plan(const FFTConvParams& p, int device, bool backward, bool need_dk, bool need_dbias) {
  int optin = 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  log2n = p.log2_fft - 1;
  n = int64_t(1) << log2n;
  threads = FFTConvTile::threads(n);
  channels = p.channels;
  rows = p.rows();
  const size_t buf = size_t(n) * sizeof(float2);
  smem1 = buf + kStaticSmem <= size_t(optin);
  smem2 = 2 * buf + kStaticSmem <= size_t(optin);
  slots = std::max<int64_t>(1, std::min<int64_t>(int64_t(4) * sms, int64_t(kScratchBudget / (2 * buf))));
  int per_sm = 0;
  cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  fwd_threads = 2 * buf <= size_t(per_sm) ? std::min(threads, FFTConvTile::kSplitThreads) : threads;
  // dk's running sums (n + 1 float2; a split CTA's bins: n/2 + 1) and a split CTA's bytes.
  const size_t acc = backward && need_dk ? size_t(n + 1) * sizeof(float2) : 0;
  const size_t split_bytes = backward ? buf + (need_dk ? size_t(n / 2 + 1) * sizeof(float2) : 0) : buf / 2;
  if (p.split_rows && n >= 64 && split_bytes + kStaticSmem <= size_t(optin) && smem1) {
    // Where one row's buffers (forward one, backward two) leave no room on the SM for a second
    // CTA, or do not fit at all, while a split CTA's half of them (and of dk's sums) does, and
    // the device runs clusters with this build's sm_90 code (else the kernel would trap; every
    // fftconv kernel is built for the same architectures, so the kspec kernel, compiled in this
    // file anyway, answers for the split kernels).
    const size_t row_bytes = backward ? 2 * buf : buf;
    split = 2 * row_bytes > size_t(per_sm) && runs_cluster_code<fftconv_kspec_kernel<true>>(device);
  }
  kspec_bytes = size_t(channels) * size_t(n + 1) * sizeof(float2);
  if (backward) {
    chunks = fftconv_bwd_chunks(p);
    dk_part_bytes = need_dk ? size_t(channels * chunks) * size_t(n + 1) * sizeof(float2) : 0;
    dbias_part_bytes = need_dbias ? size_t(channels * chunks) * sizeof(float) : 0;
    scratch_bytes = smem2 || split ? 0 : size_t(slots) * 2 * buf;
    acc_smem = need_dk && (split || 2 * buf + acc + kStaticSmem <= size_t(optin));
    bwd_smem = split ? split_bytes : smem2 ? 2 * buf + (acc_smem ? acc : 0) : smem1 ? buf : 0;
  } else {
    scratch_bytes = smem1 ? 0 : size_t(slots) * buf;
  }
}

cudaError_t launch_kspec(const FFTConvParams& p, const Plan& pl, float2* kspec, float2* scratch, cudaStream_t s) {
  const size_t smem = size_t(pl.n) * sizeof(float2);
  if (pl.smem1) {
    cudaError_t err = allow_smem(fftconv_kspec_kernel<true>, smem);
    if (err != cudaSuccess) return err;
    fftconv_kspec_kernel<true><<<pl.grid(pl.channels, true), pl.threads, smem, s>>>(p, kspec, nullptr);
  } else {
    fftconv_kspec_kernel<false><<<pl.grid(pl.channels, false), pl.threads, 0, s>>>(p, kspec, scratch);
  }
  return cudaGetLastError();
}

cudaError_t launch_finalize(const FFTConvBwdParams& p, const Plan& pl, const float2* dk_part, const float* dbias_part,
                            float2* scratch, cudaStream_t s) {
  const size_t buf = size_t(pl.n) * sizeof(float2);
  cudaError_t err = cudaSuccess;
  if (!p.dk && !p.dbias) return cudaSuccess;
  if (pl.smem1) {
    err = allow_smem(fftconv_bwd_finalize_kernel<true>, buf);
    if (err != cudaSuccess) return err;
    fftconv_bwd_finalize_kernel<true><<<pl.grid(pl.channels, true), pl.threads, buf, s>>>(p, dk_part, dbias_part,
                                                                                         nullptr);
  } else {
    // The finalize pass uses n float2 per CTA; the scratch holds 2n per slot.
    fftconv_bwd_finalize_kernel<false><<<pl.grid(pl.channels, false), pl.threads, 0, s>>>(p, dk_part, dbias_part,
                                                                                          scratch);
  }
  return cudaGetLastError();
}

}  // namespace fftconv_launch

namespace {
using namespace fftconv_launch;

template <typename T>
cudaError_t run_fwd(const FFTConvParams& p, const Plan& pl, char* ws, cudaStream_t s) {
  float2* kspec = reinterpret_cast<float2*>(ws);
  float2* scratch = reinterpret_cast<float2*>(ws + pl.kspec_bytes);
  cudaError_t err = launch_kspec(p, pl, kspec, scratch, s);
  if (err != cudaSuccess) return err;
  return launch_rows_fwd<T>(p, pl, kspec, scratch, s);
}

template <typename T>
cudaError_t run_bwd(const FFTConvBwdParams& p, const Plan& pl, char* ws, cudaStream_t s) {
  float2* kspec = reinterpret_cast<float2*>(ws);
  float2* dk_part = reinterpret_cast<float2*>(ws + pl.kspec_bytes);
  float2* scratch = reinterpret_cast<float2*>(ws + pl.kspec_bytes + pl.dk_part_bytes);
  float* dbias_part = reinterpret_cast<float*>(ws + pl.kspec_bytes + pl.dk_part_bytes + pl.scratch_bytes);
  if (pl.rows > 0) {
    cudaError_t err = launch_kspec(p, pl, kspec, scratch, s);
    if (err != cudaSuccess) return err;
    err = launch_rows_bwd<T>(p, pl, kspec, dk_part, dbias_part, scratch, s);
    if (err != cudaSuccess) return err;
  }
  return launch_finalize(p, pl, dk_part, dbias_part, scratch, s);
}

int current_device() {
  int device = 0;
  cudaGetDevice(&device);
  return device;
}

}  // namespace

size_t fftconv_cuda_fwd_workspace_bytes(const FFTConvParams& p, int device) {
  return p.rows() == 0 ? 0 : Plan(p, device, false, false, false).total();
}

bool fftconv_cuda_fwd_splits(const FFTConvParams& p, int device) { return Plan(p, device, false, false, false).split; }

bool fftconv_cuda_bwd_splits(const FFTConvBwdParams& p, int device) {
  return Plan(p, device, true, p.dk != nullptr, p.dbias != nullptr).split;
}

const char* launch_fftconv_fwd(const FFTConvParams& p, void* workspace, void* stream_ptr) {
  if (p.rows() == 0) return nullptr;
  if (p.log2_fft > 21) return "fftconv: sequence too long";
  const Plan pl(p, current_device(), false, false, false);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  char* ws = static_cast<char*>(workspace);
  cudaError_t err = cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: err = run_fwd<float>(p, pl, ws, stream); break;
    case DType::kFloat16: err = run_fwd<__half>(p, pl, ws, stream); break;
    case DType::kBFloat16: err = run_fwd<__nv_bfloat16>(p, pl, ws, stream); break;
    default: return "fftconv: no CUDA kernel for this dtype (float64 is CPU-only)";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

size_t fftconv_cuda_bwd_workspace_bytes(const FFTConvBwdParams& p, int device) {
  return Plan(p, device, true, p.dk != nullptr, p.dbias != nullptr).total();
}

const char* launch_fftconv_bwd(const FFTConvBwdParams& p, void* workspace, void* stream_ptr) {
  if (p.channels == 0) return nullptr;
  if (p.log2_fft > 21) return "fftconv: sequence too long";
  const Plan pl(p, current_device(), true, p.dk != nullptr, p.dbias != nullptr);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  char* ws = static_cast<char*>(workspace);
  cudaError_t err = cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: err = run_bwd<float>(p, pl, ws, stream); break;
    case DType::kFloat16: err = run_bwd<__half>(p, pl, ws, stream); break;
    case DType::kBFloat16: err = run_bwd<__nv_bfloat16>(p, pl, ws, stream); break;
    default: return "fftconv: no CUDA kernel for this dtype (float64 is CPU-only)";
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
