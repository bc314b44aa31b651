// Entry points of the attention kernels: dtype and head dimension -> instantiation.
// Head dimensions with kernels: 32, 64, 96, 128, 192, 256, or the subset the build selected
// (CMake MMM_ATTENTION_HEAD_DIMS, passed as the bit mask MMM_ATTENTION_HEAD_DIMS_MASK); any multiple of 8 up
// to 256 runs on the smallest compiled one above it (its extra columns are zero-filled in shared
// memory and never stored). With no compiled one above it the launchers return an error.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "attention/attention_launch_template.cuh"

namespace mmm {

#define MMM_DECLARE(D)                                                                                        \
  extern template cudaError_t launch_attention_fwd_t<D, __half>(const AttentionFwdParams&, cudaStream_t);     \
  extern template cudaError_t launch_attention_fwd_t<D, __nv_bfloat16>(const AttentionFwdParams&, cudaStream_t); \
  extern template cudaError_t launch_attention_bwd_t<D, __half>(const AttentionBwdParams&, float*, float*, cudaStream_t); \
  extern template cudaError_t launch_attention_bwd_t<D, __nv_bfloat16>(const AttentionBwdParams&, float*, float*, cudaStream_t);
MMM_DECLARE(32)
MMM_DECLARE(64)
MMM_DECLARE(96)
MMM_DECLARE(128)
MMM_DECLARE(192)
MMM_DECLARE(256)
#undef MMM_DECLARE

#ifndef MMM_ATTENTION_HEAD_DIMS_MASK  // a build outside CMake (e.g. one nvcc call): all of them
#define MMM_ATTENTION_HEAD_DIMS_MASK 0x3f
#endif

namespace {
constexpr int kAllHeadDims[] = {32, 64, 96, 128, 192, 256};  // CMake's MMM_ATTENTION_ALL_HEAD_DIMS
constexpr unsigned kHeadDimsMask = MMM_ATTENTION_HEAD_DIMS_MASK;
static_assert(kHeadDimsMask != 0 && kHeadDimsMask < (1u << 6), "MMM_ATTENTION_HEAD_DIMS_MASK");

constexpr bool compiled(int d) {
  for (int i = 0; i < 6; ++i)
    if (kAllHeadDims[i] == d) return (kHeadDimsMask >> i) & 1u;
  return false;
}

const std::string& compiled_list() {
  static const std::string s = [] {
    std::string r;
    for (int i = 0; i < 6; ++i)
      if ((kHeadDimsMask >> i) & 1u) r += (r.empty() ? "" : ", ") + std::to_string(kAllHeadDims[i]);
    return r;
  }();
  return s;
}
}  // namespace

const char* attention_compiled_head_dims() { return compiled_list().c_str(); }

int attention_compiled_head_dim(int64_t head_dim) {
  for (int d : kAllHeadDims)  // ascending
    if (compiled(d) && head_dim <= d) return d;
  return 0;
}

namespace {
// Only compiled head dims are named: the others' launchers are declared but never defined.
template <int D, typename T>
cudaError_t fwd_d(const AttentionFwdParams& p, cudaStream_t s) {
  if constexpr (compiled(D)) return launch_attention_fwd_t<D, T>(p, s);
  else return cudaErrorInvalidValue;
}
template <int D, typename T>
cudaError_t bwd_d(const AttentionBwdParams& p, float* delta, float* dq_accum, cudaStream_t s) {
  if constexpr (compiled(D)) return launch_attention_bwd_t<D, T>(p, delta, dq_accum, s);
  else return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t fwd(const AttentionFwdParams& p, cudaStream_t s) {
  switch (attention_compiled_head_dim(p.head_dim)) {
    case 32: return fwd_d<32, T>(p, s);
    case 64: return fwd_d<64, T>(p, s);
    case 96: return fwd_d<96, T>(p, s);
    case 128: return fwd_d<128, T>(p, s);
    case 192: return fwd_d<192, T>(p, s);
    case 256: return fwd_d<256, T>(p, s);
    default: return cudaErrorInvalidValue;
  }
}
template <typename T>
cudaError_t bwd(const AttentionBwdParams& p, float* delta, float* dq_accum, cudaStream_t s) {
  switch (attention_compiled_head_dim(p.fwd.head_dim)) {
    case 32: return bwd_d<32, T>(p, delta, dq_accum, s);
    case 64: return bwd_d<64, T>(p, delta, dq_accum, s);
    case 96: return bwd_d<96, T>(p, delta, dq_accum, s);
    case 128: return bwd_d<128, T>(p, delta, dq_accum, s);
    case 192: return bwd_d<192, T>(p, delta, dq_accum, s);
    case 256: return bwd_d<256, T>(p, delta, dq_accum, s);
    default: return cudaErrorInvalidValue;
  }
}

const char* check_shapes(const AttentionFwdParams& p) {
  if (p.head_dim < 1 || p.head_dim > 256 || p.head_dim % 8 != 0)
    return "fused_attention (CUDA): head_dim must be a multiple of 8 up to 256";
  if (attention_compiled_head_dim(p.head_dim) == 0) {
    static const std::string msg = "fused_attention (CUDA): no kernel for this head_dim: this build of mmm compiled "
                                   "head dims " + compiled_list() + " only (CMake MMM_ATTENTION_HEAD_DIMS)";
    return msg.c_str();
  }
  if (ceil_div(p.seqlen_q, 64) > 65535 || ceil_div(p.seqlen_k, 64) > 65535)
    return "fused_attention (CUDA): sequence length above 4194240";
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return "fused_attention (CUDA): q, k, v must be float16 or bfloat16";
  return nullptr;
}

void clamp_windows(AttentionFwdParams& p) {  // params.h: kAttnWindowClamp
  p.window_left = p.window_left < 0 ? -1 : std::min(p.window_left, kAttnWindowClamp);
  p.window_right = p.window_right < 0 ? -1 : std::min(p.window_right, kAttnWindowClamp);
}
}  // namespace

bool attention_bwd_uses_atomic_dq(const AttentionBwdParams& p) {
  if (p.deterministic) return false;
  int smem = 0;
  switch (attention_compiled_head_dim(p.fwd.head_dim)) {
    case 32: smem = attention_bwd_atomic_smem<32>(); break;
    case 64: smem = attention_bwd_atomic_smem<64>(); break;
    case 96: smem = attention_bwd_atomic_smem<96>(); break;
    case 128: smem = attention_bwd_atomic_smem<128>(); break;
    default: return false;
  }
  return attention_smem_optin() >= smem;
}

namespace {
// Floats of the workspace before the dq accumulator: delta, rounded up to 16 bytes (the convert
// kernel reads the accumulator as float2, the atomics as float).
int64_t dq_accum_offset(const AttentionFwdParams& f) { return (f.batch * f.heads_q * f.seqlen_q + 3) / 4 * 4; }
}  // namespace

size_t attention_bwd_cuda_workspace_bytes(const AttentionBwdParams& p) {
  const AttentionFwdParams& f = p.fwd;
  if (!attention_bwd_uses_atomic_dq(p)) return size_t(f.batch * f.heads_q * f.seqlen_q) * sizeof(float);
  return size_t(dq_accum_offset(f) + f.batch * f.heads_q * f.seqlen_q * f.head_dim) * sizeof(float);
}

const char* launch_attention_bwd(const AttentionBwdParams& p, void* stream) {
  const AttentionFwdParams& f = p.fwd;
  if (f.batch * f.heads_q == 0 || f.seqlen_q == 0) {
    return nullptr;  // nothing to do; the glue zero-fills dk/dv
  }
  if (const char* bad = check_shapes(f)) return bad;
  AttentionBwdParams c = p;
  clamp_windows(c.fwd);
  auto s = static_cast<cudaStream_t>(stream);
  float* delta = static_cast<float*>(p.workspace);
  // The workspace was sized by attention_bwd_cuda_workspace_bytes on this device: the same choice.
  float* dq_accum = attention_bwd_uses_atomic_dq(p) ? delta + dq_accum_offset(f) : nullptr;
  const cudaError_t err =
      f.dtype == DType::kFloat16 ? bwd<__half>(c, delta, dq_accum, s) : bwd<__nv_bfloat16>(c, delta, dq_accum, s);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

const char* launch_attention_fwd(const AttentionFwdParams& p, void* stream) {
  if (p.batch * p.heads_q == 0 || p.seqlen_q == 0) return nullptr;
  if (const char* bad = check_shapes(p)) return bad;
  AttentionFwdParams c = p;
  clamp_windows(c);
  auto s = static_cast<cudaStream_t>(stream);
  const cudaError_t err = p.dtype == DType::kFloat16 ? fwd<__half>(c, s) : fwd<__nv_bfloat16>(c, s);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
