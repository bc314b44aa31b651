// fftconv: causal long convolution through the FFT, Hyena's gated form,
//
//   v = pregate * u                                   (B, H, N); a missing gate is 1
//   z[b,h,t] = sum_{s <= t} k[h, t-s] v[b,h,s] + bias[h] * u[b,h,t]
//   y = postgate * z
//
// computed as irfft(rfft(v, L) * rfft(k, L))[..., :N] with L = the next power of two >= 2N:
// zero padding to L >= 2N turns the circular convolution into the exact linear one, so every
// N >= 1 works. bias is the per-channel skip (Hyena's D) and multiplies the raw u, not v.
// Arithmetic in fp32 whatever the storage type (fp64 for fp64 inputs, CPU only).
//
// The real length-L signals are transformed as L/2-point complex FFTs (even samples in the real
// part, odd samples in the imaginary part) plus one post/pre-processing sweep, so a row's whole
// working set is L/2 complex numbers: L floats, 4L bytes.
#pragma once
#include "core/common.h"

namespace mmm {

struct FFTConvParams {
  int64_t batch = 0, channels = 0, n = 0;
  int log2_fft = 1;  // L = 2^log2_fft = max(2, next power of two >= 2n)
  // (batch * channels, n) row views with unit column stride; row r = b * channels + h.
  const void* u = nullptr;        int64_t u_rs = 0;
  const void* pregate = nullptr;  int64_t pre_rs = 0;   // nullptr: no gate
  const void* postgate = nullptr; int64_t post_rs = 0;  // nullptr: no gate
  DType dtype = DType::kFloat32;  // of u, both gates, y and the row gradients
  const void* k = nullptr; int64_t k_rs = 0;  // (channels, n)
  DType k_dtype = DType::kFloat32;
  const void* bias = nullptr;  // (channels,) contiguous, or nullptr
  DType bias_dtype = DType::kFloat32;
  void* y = nullptr;  // (rows, n) contiguous, forward only
  // CUDA: a row whose buffers (forward one, backward two) would fill an SM's shared memory alone
  // goes to a cluster of two CTAs on sm_90 (fftconv_{fwd,bwd}_split_kernel). false keeps one
  // CTA, for measuring.
  bool split_rows = true;

  MMM_HD int64_t rows() const { return batch * channels; }
  MMM_HD int64_t fft_len() const { return int64_t(1) << log2_fft; }
  MMM_HD int64_t half() const { return int64_t(1) << (log2_fft - 1); }  // complex FFT size L/2
};

// Backward: given dy, every gradient whose pointer is set.
//   g = dy * postgate,  dv = corr(g, k) = irfft(rfft(g) * conj(rfft(k)))[:N]
//   du = pregate * dv + bias * g,  dpregate = u * dv,  dpostgate = dy * z,
//   dbias[h] = sum_{b,t} g u,  dk[h] = sum_b irfft(rfft(g) * conj(rfft(v)))[:N]
// dk and dbias are sums over the batch in a fixed order (deterministic, fp32 / fp64).
struct FFTConvBwdParams : FFTConvParams {
  const void* dy = nullptr; int64_t dy_rs = 0;
  void* du = nullptr;         // (rows, n) contiguous, dtype
  void* dpregate = nullptr;   // (rows, n) contiguous, dtype
  void* dpostgate = nullptr;  // (rows, n) contiguous, dtype
  void* dk = nullptr;         // (channels, n) contiguous, k_dtype
  void* dbias = nullptr;      // (channels,), bias_dtype
};

// ---- CPU (fftconv_cpu.cpp) -------------------------------------------------------------------
// Channels are transformed a group of kFftconvCpuChannels at a time (one per vector lane; the
// last group padded). Real type of the arithmetic: double for fp64 inputs, else float. kspec
// holds rfft(k, L)'s L/2 + 1 bins of every channel of every group, in the CPU kernels' own layout
// (vectors: kspec and the backward's workspace must be 64-byte aligned, as torch's CPU tensors are).
constexpr int64_t kFftconvCpuChannels = 16;
inline int64_t fftconv_cpu_groups(const FFTConvParams& p) { return ceil_div(p.channels, kFftconvCpuChannels); }
size_t fftconv_cpu_kspec_bytes(const FFTConvParams& p);
void fftconv_kspec_cpu(const FFTConvParams& p, void* kspec, int64_t group_begin, int64_t group_end);
// Forward tasks b * groups + g: batch row b, channel group g.
void fftconv_fwd_cpu(const FFTConvParams& p, const void* kspec, int64_t task_begin, int64_t task_end);
// Backward in fixed (channel group, batch chunk) tasks so that dk and dbias do not depend on the
// thread count: run every task in [0, tasks), then finalize every channel group.
int64_t fftconv_bwd_cpu_tasks(const FFTConvBwdParams& p);
size_t fftconv_bwd_cpu_workspace_bytes(const FFTConvBwdParams& p);
void fftconv_bwd_cpu_task(const FFTConvBwdParams& p, const void* kspec, void* workspace, int64_t task);
void fftconv_bwd_cpu_finalize(const FFTConvBwdParams& p, void* workspace, int64_t group_begin, int64_t group_end);

// ---- CUDA (fftconv_launch.cu) ----------------------------------------------------------------
// Scratch bytes for this call on `device` (k's spectrum, the multi-kernel path's buffers, the
// backward's per-chunk dk spectra), then the launch; nullptr on success, else a static message.
size_t fftconv_cuda_fwd_workspace_bytes(const FFTConvParams& p, int device);
// Whether the CUDA forward / backward splits each row over a cluster of two CTAs (split_rows,
// sm_90, rows whose buffers would fill an SM's shared memory alone).
bool fftconv_cuda_fwd_splits(const FFTConvParams& p, int device);
bool fftconv_cuda_bwd_splits(const FFTConvBwdParams& p, int device);
const char* launch_fftconv_fwd(const FFTConvParams& p, void* workspace, void* stream);
size_t fftconv_cuda_bwd_workspace_bytes(const FFTConvBwdParams& p, int device);
const char* launch_fftconv_bwd(const FFTConvBwdParams& p, void* workspace, void* stream);

}  // namespace mmm
