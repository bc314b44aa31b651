// The launch code of fftconv shared by fftconv_launch.cu (kspec, finalize, dispatch) and the
// per-dtype instantiations (instantiations/fftconv_<dtype>.cu: the row kernels, the bulk of the
// compile time, built in parallel).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "fftconv/fftconv_kernel.cuh"
#include "fftconv/params.h"

namespace mmm::fftconv_launch {

constexpr size_t kScratchBudget = size_t(256) << 20;  // global scratch for the unfused path
constexpr int kStaticSmem = 1024;                    // margin for the kernels' static shared memory

struct Plan {
  int log2n = 0, threads = 32;
  // The forward's CTAs (fftconv_fwd_kernel): at most FFTConvTile::kSplitThreads (256) threads
  // where two rows' buffers fit an SM's shared memory, so that two CTAs of <= 128 registers share
  // its register file (512 threads of 128 registers would fill it: at N = 8192 one row per SM,
  // nothing to overlap its loads with another's work; fft_cta_kernel keeps the same bound).
  int fwd_threads = 32;
  int64_t n = 1, channels = 0, rows = 0, chunks = 0, slots = 1;
  bool smem1 = false;  // one buffer (4L bytes) fits shared memory
  bool smem2 = false;  // two buffers fit
  bool split = false;  // each row on a cluster of two CTAs (fftconv_{fwd,bwd}_split_kernel)
  // Backward: dk's running sums in shared memory, n + 1 float2 after the two buffers (and, split,
  // each CTA's half after its halves), whenever dk is asked for and they fit.
  bool acc_smem = false;
  size_t bwd_smem = 0;  // the backward row kernel's dynamic shared memory
  size_t kspec_bytes = 0, dk_part_bytes = 0, scratch_bytes = 0, dbias_part_bytes = 0;
  int sms = 1;

  // Defined in fftconv_launch.cu: it names a kernel, which would otherwise be compiled again in
  // every instantiation file.
  Plan(const FFTConvParams& p, int device, bool backward, bool need_dk, bool need_dbias);
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

cudaError_t launch_kspec(const FFTConvParams& p, const Plan& pl, float2* kspec, float2* scratch, cudaStream_t s);
cudaError_t launch_finalize(const FFTConvBwdParams& p, const Plan& pl, const float2* dk_part, const float* dbias_part,
                            float2* scratch, cudaStream_t s);

// y for every row, given k's spectrum.
template <typename T>
cudaError_t launch_rows_fwd(const FFTConvParams& p, const Plan& pl, const float2* kspec, float2* scratch,
                            cudaStream_t s) {
  const size_t smem = size_t(pl.n) * sizeof(float2);
  if (pl.split) {  // a cluster of two CTAs per row, half the buffer each; pairs of CTAs loop over rows
    const auto kernel = fftconv_fwd_split_kernel<T>;
    cudaError_t err = allow_smem(kernel, smem / 2);
    if (err != cudaSuccess) return err;
    const ClusterLaunch launch(2 * unsigned(std::min<int64_t>(pl.rows, int64_t(1) << 24)),
                               unsigned(FFTConvTile::split_threads(pl.n / 2)), smem / 2, s, 2);
    err = cudaLaunchKernelEx(&launch.config, kernel, p, kspec);
    return err != cudaSuccess ? err : cudaGetLastError();
  }
  if (pl.smem1) {
    cudaError_t err = allow_smem(fftconv_fwd_kernel<T, true>, smem);
    if (err != cudaSuccess) return err;
    fftconv_fwd_kernel<T, true><<<pl.grid(pl.rows, true), pl.fwd_threads, smem, s>>>(p, kspec, nullptr);
  } else {
    fftconv_fwd_kernel<T, false><<<pl.grid(pl.rows, false), pl.threads, 0, s>>>(p, kspec, scratch);
  }
  return cudaGetLastError();
}

// The row gradients and the per-chunk dk / dbias partials (pl.rows > 0).
template <typename T>
cudaError_t launch_rows_bwd(const FFTConvBwdParams& p, const Plan& pl, const float2* kspec, float2* dk_part,
                            float* dbias_part, float2* scratch, cudaStream_t s) {
  cudaError_t err = cudaSuccess;
  const size_t buf = size_t(pl.n) * sizeof(float2);
  const int64_t tasks = pl.channels * pl.chunks;
  if (pl.split) {  // a cluster of two CTAs per task, half of both buffers each
    const auto kernel = fftconv_bwd_split_kernel<T>;
    err = allow_smem(kernel, pl.bwd_smem);
    if (err != cudaSuccess) return err;
    const ClusterLaunch launch(2 * unsigned(std::min<int64_t>(tasks, int64_t(1) << 24)),
                               unsigned(FFTConvTile::threads(pl.n / 2)), pl.bwd_smem, s, 2);
    err = cudaLaunchKernelEx(&launch.config, kernel, p, kspec, dk_part, dbias_part);
    return err != cudaSuccess ? err : cudaGetLastError();
  }
  if (pl.smem2) {
    err = allow_smem(fftconv_bwd_kernel<T, true, true>, pl.bwd_smem);
    if (err != cudaSuccess) return err;
    fftconv_bwd_kernel<T, true, true><<<pl.grid(tasks, true), pl.threads, pl.bwd_smem, s>>>(
        p, kspec, dk_part, dbias_part, nullptr, pl.acc_smem);
  } else if (pl.smem1) {
    err = allow_smem(fftconv_bwd_kernel<T, true, false>, buf);
    if (err != cudaSuccess) return err;
    fftconv_bwd_kernel<T, true, false><<<pl.grid(tasks, false), pl.threads, buf, s>>>(p, kspec, dk_part, dbias_part,
                                                                                     scratch, false);
  } else {
    fftconv_bwd_kernel<T, false, false><<<pl.grid(tasks, false), pl.threads, 0, s>>>(p, kspec, dk_part, dbias_part,
                                                                                    scratch, false);
  }
  return cudaGetLastError();
}

#define MMM_FFTCONV_INSTANTIATE(T)                                                                              \
  template cudaError_t launch_rows_fwd<T>(const FFTConvParams&, const Plan&, const float2*, float2*, cudaStream_t); \
  template cudaError_t launch_rows_bwd<T>(const FFTConvBwdParams&, const Plan&, const float2*, float2*, float*,     \
                                          float2*, cudaStream_t);

}  // namespace mmm::fftconv_launch
