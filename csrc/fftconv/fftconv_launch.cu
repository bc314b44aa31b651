// Entry points of fftconv on CUDA. The kernels size themselves from the device's shared-memory
// limit per block (cudaDevAttrMaxSharedMemoryPerBlockOptin):
//   forward   one row's buffer, n = L/2 float2 = 4L bytes: fused in shared memory up to
//             N = 16384 where 128 KB fit (A100: 163 KB, H100: 227 KB), N = 8192 with 99 KB
//             (RTX 30/40); longer rows run the same kernels on per-CTA slots of global scratch
//             (the multi-kernel path: k's spectrum, the rows, each through L2 instead of shared
//             memory; correct for every N up to 2^20, slower).
//   backward  two buffers per row (g and v): both in shared memory up to 8L bytes, else the
//             first in shared memory and the second in global scratch, else both in scratch.
// Launches: kspec (one CTA per channel), then fwd (one CTA per row) or bwd (one CTA per
// (channel, batch chunk)) + finalize (one CTA per channel: dk, dbias).
#include <cuda_runtime.h>

#include <algorithm>

#include "fftconv/fftconv_kernel.cuh"
#include "fftconv/params.h"

namespace mmm {
namespace {

constexpr size_t kScratchBudget = size_t(256) << 20;  // global scratch for the unfused path
constexpr int kStaticSmem = 1024;                    // margin for the kernels' static shared memory

struct Plan {
  int log2n = 0, threads = 32;
  int64_t n = 1, channels = 0, rows = 0, chunks = 0, slots = 1;
  bool smem1 = false;  // one buffer (4L bytes) fits shared memory
  bool smem2 = false;  // two buffers fit
  size_t kspec_bytes = 0, dk_part_bytes = 0, scratch_bytes = 0, dbias_part_bytes = 0;
  int sms = 1;

  Plan(const FFTConvParams& p, int device, bool backward, bool need_dk, bool need_dbias) {
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
    kspec_bytes = size_t(channels) * size_t(n + 1) * sizeof(float2);
    if (backward) {
      chunks = fftconv_bwd_chunks(p.batch, p.channels);
      dk_part_bytes = need_dk ? size_t(channels * chunks) * size_t(n + 1) * sizeof(float2) : 0;
      dbias_part_bytes = need_dbias ? size_t(channels * chunks) * sizeof(float) : 0;
      scratch_bytes = smem2 ? 0 : size_t(slots) * 2 * buf;
    } else {
      scratch_bytes = smem1 ? 0 : size_t(slots) * buf;
    }
  }
  size_t total() const { return kspec_bytes + dk_part_bytes + scratch_bytes + dbias_part_bytes; }
  // Grid for `work` independent items: everything at once from shared memory, else one CTA per
  // scratch slot.
  unsigned grid(int64_t work, bool in_smem) const {
    const int64_t cap = in_smem ? int64_t(0x7fffffff) : slots;
    return unsigned(std::max<int64_t>(1, std::min(work, cap)));
  }
};

template <typename K>
cudaError_t allow_smem(K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
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

template <typename T>
cudaError_t run_fwd(const FFTConvParams& p, const Plan& pl, char* ws, cudaStream_t s) {
  float2* kspec = reinterpret_cast<float2*>(ws);
  float2* scratch = reinterpret_cast<float2*>(ws + pl.kspec_bytes);
  cudaError_t err = launch_kspec(p, pl, kspec, scratch, s);
  if (err != cudaSuccess) return err;
  const size_t smem = size_t(pl.n) * sizeof(float2);
  if (pl.smem1) {
    err = allow_smem(fftconv_fwd_kernel<T, true>, smem);
    if (err != cudaSuccess) return err;
    fftconv_fwd_kernel<T, true><<<pl.grid(pl.rows, true), pl.threads, smem, s>>>(p, kspec, nullptr);
  } else {
    fftconv_fwd_kernel<T, false><<<pl.grid(pl.rows, false), pl.threads, 0, s>>>(p, kspec, scratch);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t run_bwd(const FFTConvBwdParams& p, const Plan& pl, char* ws, cudaStream_t s) {
  float2* kspec = reinterpret_cast<float2*>(ws);
  float2* dk_part = reinterpret_cast<float2*>(ws + pl.kspec_bytes);
  float2* scratch = reinterpret_cast<float2*>(ws + pl.kspec_bytes + pl.dk_part_bytes);
  float* dbias_part = reinterpret_cast<float*>(ws + pl.kspec_bytes + pl.dk_part_bytes + pl.scratch_bytes);
  cudaError_t err = cudaSuccess;
  const size_t buf = size_t(pl.n) * sizeof(float2);
  if (pl.rows > 0) {
    err = launch_kspec(p, pl, kspec, scratch, s);
    if (err != cudaSuccess) return err;
    const int64_t tasks = pl.channels * pl.chunks;
    if (pl.smem2) {
      err = allow_smem(fftconv_bwd_kernel<T, true, true>, 2 * buf);
      if (err != cudaSuccess) return err;
      fftconv_bwd_kernel<T, true, true><<<pl.grid(tasks, true), pl.threads, 2 * buf, s>>>(p, kspec, dk_part, dbias_part,
                                                                                          nullptr);
    } else if (pl.smem1) {
      err = allow_smem(fftconv_bwd_kernel<T, true, false>, buf);
      if (err != cudaSuccess) return err;
      fftconv_bwd_kernel<T, true, false><<<pl.grid(tasks, false), pl.threads, buf, s>>>(p, kspec, dk_part, dbias_part,
                                                                                       scratch);
    } else {
      fftconv_bwd_kernel<T, false, false><<<pl.grid(tasks, false), pl.threads, 0, s>>>(p, kspec, dk_part, dbias_part,
                                                                                      scratch);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
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

int current_device() {
  int device = 0;
  cudaGetDevice(&device);
  return device;
}

}  // namespace

size_t fftconv_cuda_fwd_workspace_bytes(const FFTConvParams& p, int device) {
  return p.rows() == 0 ? 0 : Plan(p, device, false, false, false).total();
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
