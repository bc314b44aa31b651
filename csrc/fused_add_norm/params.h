// fused_add_norm: h = dropout(x, p) + residual; y = norm(h) * weight + bias; out = act(y).
// Plain structs shared by the CPU twin, the CUDA launcher and the C++ benchmark.
//
// Every 2-D operand is (rows, N) with unit column stride and its own row stride (in elements),
// so a strided view whose leading dims collapse to one stride is read in place.
// A null pointer means "absent" (no residual, no weight, no bias, ...).
#pragma once
#include <cstddef>
#include "core/common.h"

namespace mmm {

enum class Activation : int { kNone = 0, kGelu = 1, kGeluTanh = 2 };

struct FusedAddNormFwdParams {
  int64_t rows = 0, cols = 0;   // cols = N, the normalized length

  const void* x = nullptr;        int64_t x_row_stride = 0;    DType x_dtype = DType::kFloat32;
  const void* residual = nullptr; int64_t res_row_stride = 0;  // dtype: h_dtype
  const void* weight = nullptr;   const void* bias = nullptr;  DType w_dtype = DType::kFloat32;

  void* out = nullptr;            int64_t out_row_stride = 0;  // dtype: x_dtype
  void* h_out = nullptr;          int64_t h_row_stride = 0;    // residual_out; may be null
  DType h_dtype = DType::kFloat32;  // residual and residual_out: x_dtype or fp32
  // (rows,) statistics in fp32 (fp64 when x is fp64, which only the CPU accepts), both
  // required; mean is unused (may be null) when rms.
  void* mean = nullptr;
  void* rstd = nullptr;

  double eps = 1e-5;
  bool rms = false;
  Activation act = Activation::kNone;
  double dropout_p = 0.0;         // 0 disables dropout
  uint64_t seed = 0;
};

struct FusedAddNormBwdParams {
  int64_t rows = 0, cols = 0;

  const void* dout = nullptr;     int64_t dout_row_stride = 0;  // dtype: x_dtype
  const void* dh_out = nullptr;   int64_t dh_out_row_stride = 0; // grad of residual_out; may be null
  const void* h = nullptr;        int64_t h_row_stride = 0;      // saved residual_out (or x)
  DType x_dtype = DType::kFloat32;
  DType h_dtype = DType::kFloat32;  // of h, dh_out and dresidual
  const void* weight = nullptr;   const void* bias = nullptr;  DType w_dtype = DType::kFloat32;
  const void* mean = nullptr;     const void* rstd = nullptr;    // as in the forward

  void* dx = nullptr;             int64_t dx_row_stride = 0;     // dtype: x_dtype
  void* dresidual = nullptr;      int64_t dres_row_stride = 0;   // dtype: h_dtype; may be null
  void* dweight = nullptr;        void* dbias = nullptr;         // (cols,) w_dtype; may be null

  // Scratch for the deterministic weight/bias reduction; size from *_workspace_bytes() (the CPU
  // needs it even without dweight/dbias; CUDA then asks for none).
  void* workspace = nullptr;

  bool rms = false;
  Activation act = Activation::kNone;
  double dropout_p = 0.0;
  uint64_t seed = 0;
};

// Dropout keeps an element iff its random 32 bits >= this; the kept value is scaled by 1/(1-p).
MMM_HD uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(p * 4294967296.0);
}

// ---- CPU twin (csrc/fused_add_norm/fused_add_norm_cpu.cpp) ----------------------------------
// Row ranges so the caller brings its own thread pool (torch's parallel_for in the glue).
void fused_add_norm_fwd_cpu(const FusedAddNormFwdParams& p, int64_t row_begin, int64_t row_end);
// The backward splits rows into a fixed number of partitions, independent of the thread count,
// so dweight/dbias are bitwise reproducible. Call bwd_rows for every partition, then finalize.
int64_t fused_add_norm_bwd_cpu_partitions(const FusedAddNormBwdParams& p);
size_t fused_add_norm_bwd_cpu_workspace_bytes(const FusedAddNormBwdParams& p);
void fused_add_norm_bwd_cpu_partition(const FusedAddNormBwdParams& p, int64_t partition);
void fused_add_norm_bwd_cpu_finalize(const FusedAddNormBwdParams& p, int64_t col_begin, int64_t col_end);

// ---- CUDA (csrc/fused_add_norm/fused_add_norm_launch.cu) ------------------------------------
// Launch on `stream` (a cudaStream_t); return nullptr on success or a static error message.
const char* launch_fused_add_norm_fwd(const FusedAddNormFwdParams& p, void* stream);
size_t fused_add_norm_bwd_cuda_workspace_bytes(const FusedAddNormBwdParams& p, int device);
const char* launch_fused_add_norm_bwd(const FusedAddNormBwdParams& p, void* stream);

}  // namespace mmm
