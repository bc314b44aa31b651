// butterfly_multiply: torch_butterfly's learnable butterfly product (HazyResearch/butterfly,
// torch_butterfly/multiply.py, butterfly_multiply_torch), re-implemented.
//
// x is read as rows of length n_in, row r = b * nstacks + s (stack s, batch index b), zero padded
// or trimmed to n = 2^log_n. Each row goes through L = nblocks * log_n factors f = block * log_n +
// idx; factor f has stride 2^stride_log2(f) (idx, or log_n-1-idx when that block runs in
// decreasing order; the order flips after every block). A factor of stride S pairs the elements
//   lo = k * 2S + q,  hi = lo + S   (q < S)   with pair index  p = k * S + q  (p < n/2)
// and maps (v[lo], v[hi]) -> (t00 v[lo] + t01 v[hi], t10 v[lo] + t11 v[hi]) with
// t_ij = twiddle[s, block, idx, p, i, j]: twiddle is contiguous (nstacks, nblocks, log_n, n/2, 2, 2),
// i.e. (nstacks, L, n/2, 4) with ij = 2i + j.
//
// Backward (PyTorch's complex convention, conj = identity for real types):
//   dv[lo] = conj(t00) d[lo] + conj(t10) d[hi],   dv[hi] = conj(t01) d[lo] + conj(t11) d[hi]
//   dt_ij  = sum over the batch of d[out_i] * conj(v[in_j])
#pragma once
#include <functional>

#include "core/common.h"

namespace mmm {

struct ButterflyParams {
  int64_t batch = 0, nstacks = 1, nblocks = 1, log_n = 1, n = 2;
  int64_t n_in = 2;  // x's length: < n reads as zero padded, > n is trimmed
  bool increasing_stride = true;

  const void* x = nullptr; int64_t x_row_stride = 0; DType x_dtype = DType::kFloat32;
  const void* twiddle = nullptr; DType tw_dtype = DType::kFloat32;  // contiguous, see above
  void* y = nullptr;  // (batch * nstacks, n) contiguous, x's dtype (forward)

  // backward: dy (batch * nstacks, n) rows with dy_row_stride, x's dtype; dx (batch * nstacks, n_in)
  // contiguous, x's dtype (columns >= n are left to the caller, who zero-fills them); dtwiddle
  // contiguous in twiddle's dtype.
  const void* dy = nullptr; int64_t dy_row_stride = 0;
  void* dx = nullptr;
  void* dtwiddle = nullptr;

  MMM_HD int64_t rows() const { return batch * nstacks; }
  MMM_HD int64_t factors() const { return nblocks * log_n; }
  MMM_HD int64_t n_read() const { return n_in < n ? n_in : n; }
  // log2 of factor f's stride.
  MMM_HD int stride_log2(int64_t f) const {
    const int64_t block = f / log_n, idx = f % log_n;
    const bool inc = increasing_stride != ((block & 1) != 0);
    return int(inc ? idx : log_n - 1 - idx);
  }
};

MMM_HD constexpr bool is_complex(DType t) { return t == DType::kComplex64 || t == DType::kComplex128; }
MMM_HD constexpr int64_t elem_bytes(DType t) {
  return t == DType::kFloat16 || t == DType::kBFloat16 ? 2 : t == DType::kFloat32 ? 4 : t == DType::kComplex128 ? 16 : 8;
}

// Pair index of the element lo (bit s of lo clear) for a factor of stride 2^s.
MMM_HD constexpr int64_t butterfly_pair(int64_t lo, int s) {
  return ((lo >> (s + 1)) << s) | (lo & ((int64_t(1) << s) - 1));
}

// CPU twin (butterfly_cpu.cpp). `parallel_for(begin, end, grain, fn)` runs fn over sub-ranges
// (the glue passes torch's). dtwiddle is summed over fixed row chunks in a fixed order, so it is
// the same whatever the thread count.
using CpuParallelFor = std::function<void(int64_t, int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;
void butterfly_forward_cpu(const ButterflyParams& p, const CpuParallelFor& parallel_for);
void butterfly_backward_cpu(const ButterflyParams& p, const CpuParallelFor& parallel_for);

// CUDA (butterfly_launch.cu): bytes of device scratch the call needs, then the launch on `stream`;
// nullptr on success, else a static message.
size_t butterfly_cuda_workspace_bytes(const ButterflyParams& p, bool backward, int device);
const char* launch_butterfly_forward(const ButterflyParams& p, void* workspace, void* stream);
const char* launch_butterfly_backward(const ButterflyParams& p, void* workspace, void* stream);

}  // namespace mmm
