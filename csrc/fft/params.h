// fft / ifft / rfft / irfft along the last dimension, power-of-two lengths (torch.fft semantics).
//
// Every transform is a complex FFT of n = 2^log2n points per row:
//   kC2C  y[k] = scale * sum_j x[j] exp(-+2*pi*i*jk/n)               (+ when inverse)
//   kR2C  real x of length N = 2n read as n complex pairs, then core/fft rfft_post:
//         y[k] = scale * sum_t x[t] exp(-2*pi*i*kt/N), k = 0..n      (n + 1 outputs)
//   kC2R  bins x[0..n] (Hermitian half spectrum) -> irfft_pre -> inverse FFT -> real y of length N:
//         y[t] = scale * sum_{k<N} Xfull[k] exp(+2*pi*i*kt/N)        (imag of x[0], x[n] ignored)
// scale folds torch's norm modes (backward / ortho / forward) into the last store.
#pragma once
#include "core/common.h"

namespace mmm {

enum class FftKind : int { kC2C = 0, kR2C = 1, kC2R = 2 };

struct FftParams {
  FftKind kind = FftKind::kC2C;
  bool inverse = false;  // kC2C only (kR2C is forward, kC2R inverse)
  int log2n = 0;         // complex points per row (real signals: N = 2n)
  int64_t rows = 0;
  // Row strides in elements of the tensor's own dtype: complex for kC2C and for kC2R's input,
  // real for kR2C's input (even, so a row is whole complex pairs) and kC2R's output.
  // x rows need unit element stride; y is written densely within a row.
  const void* x = nullptr; int64_t x_row_stride = 0;
  void* y = nullptr;       int64_t y_row_stride = 0;
  bool fp64 = false;       // complex128 / float64 (CPU only) instead of complex64 / float32
  double scale = 1.0;
  // CUDA: a row that fits one CTA but would fill an SM's shared memory alone goes to two CTAs
  // (fft_kernel.cuh's kSplit2; fft and irfft, not rfft). false keeps one CTA, for measuring.
  bool split_rows = true;
};

// CPU twin (fft_cpu.cpp): rows [row_begin, row_end).
void fft_rows_cpu(const FftParams& p, int64_t row_begin, int64_t row_end);

// CUDA (fft_launch.cu). Workspace bytes for rows longer than one CTA's shared memory (the
// two-pass path; 0 otherwise), then the launch: nullptr on success, else a static message.
size_t fft_cuda_workspace_bytes(const FftParams& p, int device);
const char* launch_fft(const FftParams& p, void* workspace, void* stream);
// Longest complex transform one CTA holds on this device, and the longest the op supports.
int64_t fft_cuda_max_cta_points(int device);
int64_t fft_cuda_max_points(int device);
// The path launch_fft takes: "warp", "cta", "cta x2" (a row split over two CTAs) or "four-step".
const char* fft_cuda_path(const FftParams& p, int device);

}  // namespace mmm
