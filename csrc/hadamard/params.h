// hadamard_transform: y = scale * H_m · pad(x) along the last dimension, truncated back to n,
// where m = next power of two >= n and H_m is the Sylvester-ordered Walsh-Hadamard matrix
// (H_1 = [1], H_2k = [[H_k, H_k], [H_k, -H_k]], as scipy.linalg.hadamard). Implicit zero padding:
// nothing padded is ever stored. H is symmetric, so the backward is the same transform.
#pragma once
#include "core/common.h"

namespace mmm {

struct HadamardParams {
  int64_t rows = 0, n = 0, n_pow2 = 0;  // n_pow2 = next power of two >= n
  const void* x = nullptr; int64_t x_row_stride = 0;
  void* y = nullptr;       int64_t y_row_stride = 0;
  DType dtype = DType::kFloat32;  // of x and y; arithmetic in fp32 (fp64 for fp64)
  double scale = 1.0;
  // CUDA: a row whose segment would fill an SM alone goes to a cluster of two CTAs on sm_90
  // (hadamard_segment_kernel's kPair). false keeps one CTA, for measuring.
  bool split_rows = true;
};

// CPU twin (hadamard_cpu.cpp): a range of rows.
void hadamard_cpu(const HadamardParams& p, int64_t row_begin, int64_t row_end);

// CUDA (hadamard_launch.cu): scratch bytes needed for rows too long for one CTA's shared
// memory (0 otherwise), then the launch; nullptr on success, else a static message.
size_t hadamard_cuda_workspace_bytes(const HadamardParams& p, int device);
const char* launch_hadamard(const HadamardParams& p, void* workspace, void* stream);
// Which path launch_hadamard takes: "1 CTA", "cluster x2" (kPair) or "2-pass".
const char* hadamard_cuda_path(const HadamardParams& p, int device);

}  // namespace mmm
