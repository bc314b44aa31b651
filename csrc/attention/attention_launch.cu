// Entry points of the attention kernels: dtype and head dimension -> instantiation.
// Compiled head dimensions: 32, 64, 96, 128, 192, 256; any multiple of 8 up to 256 runs on
// the next one up (its extra columns are zero-filled in shared memory and never stored).
#include <cuda_runtime.h>

#include "attention/attention_launch_template.cuh"

namespace mmm {

#define MMM_DECLARE(D)                                                                                        \
  extern template cudaError_t launch_attention_fwd_t<D, __half>(const AttentionFwdParams&, cudaStream_t);     \
  extern template cudaError_t launch_attention_fwd_t<D, __nv_bfloat16>(const AttentionFwdParams&, cudaStream_t); \
  extern template cudaError_t launch_attention_bwd_t<D, __half>(const AttentionBwdParams&, float*, cudaStream_t); \
  extern template cudaError_t launch_attention_bwd_t<D, __nv_bfloat16>(const AttentionBwdParams&, float*, cudaStream_t);
MMM_DECLARE(32)
MMM_DECLARE(64)
MMM_DECLARE(96)
MMM_DECLARE(128)
MMM_DECLARE(192)
MMM_DECLARE(256)
#undef MMM_DECLARE

int attention_compiled_head_dim(int64_t head_dim) {
  for (int d : {32, 64, 96, 128, 192, 256})
    if (head_dim <= d) return d;
  return 0;
}

namespace {
template <typename T>
cudaError_t fwd(const AttentionFwdParams& p, cudaStream_t s) {
  switch (attention_compiled_head_dim(p.head_dim)) {
    case 32: return launch_attention_fwd_t<32, T>(p, s);
    case 64: return launch_attention_fwd_t<64, T>(p, s);
    case 96: return launch_attention_fwd_t<96, T>(p, s);
    case 128: return launch_attention_fwd_t<128, T>(p, s);
    case 192: return launch_attention_fwd_t<192, T>(p, s);
    case 256: return launch_attention_fwd_t<256, T>(p, s);
    default: return cudaErrorInvalidValue;
  }
}
template <typename T>
cudaError_t bwd(const AttentionBwdParams& p, float* delta, cudaStream_t s) {
  switch (attention_compiled_head_dim(p.fwd.head_dim)) {
    case 32: return launch_attention_bwd_t<32, T>(p, delta, s);
    case 64: return launch_attention_bwd_t<64, T>(p, delta, s);
    case 96: return launch_attention_bwd_t<96, T>(p, delta, s);
    case 128: return launch_attention_bwd_t<128, T>(p, delta, s);
    case 192: return launch_attention_bwd_t<192, T>(p, delta, s);
    case 256: return launch_attention_bwd_t<256, T>(p, delta, s);
    default: return cudaErrorInvalidValue;
  }
}

const char* check_shapes(const AttentionFwdParams& p) {
  if (p.head_dim < 1 || p.head_dim > 256 || p.head_dim % 8 != 0)
    return "fused_attention (CUDA): head_dim must be a multiple of 8 up to 256";
  if (ceil_div(p.seqlen_q, 64) > 65535 || ceil_div(p.seqlen_k, 64) > 65535)
    return "fused_attention (CUDA): sequence length above 4194240";
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return "fused_attention (CUDA): q, k, v must be float16 or bfloat16";
  return nullptr;
}
}  // namespace

size_t attention_bwd_cuda_workspace_bytes(const AttentionBwdParams& p) {
  return size_t(p.fwd.batch * p.fwd.heads_q * p.fwd.seqlen_q) * sizeof(float);
}

const char* launch_attention_bwd(const AttentionBwdParams& p, void* stream) {
  const AttentionFwdParams& f = p.fwd;
  if (f.batch * f.heads_q == 0 || f.seqlen_q == 0) {
    return nullptr;  // nothing to do; the glue zero-fills dk/dv
  }
  if (const char* bad = check_shapes(f)) return bad;
  auto s = static_cast<cudaStream_t>(stream);
  float* delta = static_cast<float*>(p.workspace);
  const cudaError_t err = f.dtype == DType::kFloat16 ? bwd<__half>(p, delta, s) : bwd<__nv_bfloat16>(p, delta, s);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* launch_attention_fwd(const AttentionFwdParams& p, void* stream) {
  if (p.batch * p.heads_q == 0 || p.seqlen_q == 0) return nullptr;
  if (const char* bad = check_shapes(p)) return bad;
  auto s = static_cast<cudaStream_t>(stream);
  const cudaError_t err = p.dtype == DType::kFloat16 ? fwd<__half>(p, s) : fwd<__nv_bfloat16>(p, s);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
