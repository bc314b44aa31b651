// Launch of the attention kernels for one compiled head dimension; instantiated per head
// dimension in instantiations/ so the build parallelises.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "attention/attention_bwd_kernel.cuh"
#include "attention/attention_fwd_kernel.cuh"

namespace mmm {

template <class Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes) {
  return bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)
                           : cudaSuccess;
}

template <int kD, typename T>
cudaError_t launch_attention_fwd_t(const AttentionFwdParams& p, cudaStream_t stream) {
  using K = AttnFwdTraits<kD, T>;
  auto kernel = attention_fwd_kernel<K>;
  const cudaError_t err = allow_smem(kernel, K::kSmemBytes);
  if (err != cudaSuccess) return err;
  // (batch * heads) on x (up to 2^31 - 1), query tiles on y (up to 65535: check_shapes).
  const dim3 grid(unsigned(p.batch * p.heads_q), unsigned(ceil_div(p.seqlen_q, K::kBlockM)));
  kernel<<<grid, K::kThreads, K::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// The current device's opt-in shared memory per block (0 if it cannot be read).
inline int attention_smem_optin() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
    return 0;
  return optin;
}

// Opt-in shared memory the atomic-dQ backward needs at head dim kD, in its 64-query-step form
// (0: not compiled for kD). At kD <= 64 a GPU with more takes 128-query steps.
template <int kD>
constexpr int attention_bwd_atomic_smem() {
  if constexpr (kD <= 128) return AttnBwdAtomicTraits<kD, __half>::kSmemBytes;
  else return 0;
}

template <class KA>
cudaError_t launch_attention_bwd_atomic(const AttentionBwdParams& p, const float* delta, float* dq_accum,
                                        cudaStream_t stream) {
  auto kernel = attention_bwd_atomic_kernel<KA>;
  cudaError_t err = allow_smem(kernel, KA::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(p.fwd.batch * p.fwd.heads_kv), unsigned(ceil_div(p.fwd.seqlen_k, KA::kBlockRows)));
  kernel<<<grid, KA::kThreads, KA::kSmemBytes, stream>>>(p, delta, dq_accum);
  return cudaGetLastError();
}

// delta: (B, Hq, Sq) fp32 scratch. dq_accum: nullptr (the deterministic kernels), or (B, Hq, Sq,
// head_dim) fp32 scratch for the atomic-dQ kernel (kD <= 128 only; launch_attention_bwd
// decides, attention_bwd_uses_atomic_dq).
template <int kD, typename T>
cudaError_t launch_attention_bwd_t(const AttentionBwdParams& p, float* delta, float* dq_accum, cudaStream_t stream) {
  using K = AttnBwdTraits<kD, T>;
  const AttentionFwdParams& f = p.fwd;
  const int64_t rows = f.batch * f.heads_q * f.seqlen_q;
  const unsigned row_blocks = unsigned(std::min<int64_t>(ceil_div(rows, 8), 1 << 20));  // a warp per row
  if (dq_accum != nullptr && attention_bwd_atomic_smem<kD>() == 0) return cudaErrorInvalidValue;  // none at this kD
  attention_bwd_dot_kernel<T><<<row_blocks, 256, 0, stream>>>(p, delta, dq_accum);  // zeroes dq_accum too
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if constexpr (attention_bwd_atomic_smem<kD>() > 0) {
    if (dq_accum != nullptr) {
      if (f.seqlen_k > 0) {
        using Wide = AttnBwdAtomicTraits<kD, T, kD <= 64 ? 128 : 64>;
        err = Wide::kBlockCols == 128 && attention_smem_optin() >= Wide::kSmemBytes
                  ? launch_attention_bwd_atomic<Wide>(p, delta, dq_accum, stream)
                  : launch_attention_bwd_atomic<AttnBwdAtomicTraits<kD, T>>(p, delta, dq_accum, stream);
        if (err != cudaSuccess) return err;
      }
      attention_bwd_dq_convert_kernel<T><<<row_blocks, 256, 0, stream>>>(p, dq_accum);
      return cudaGetLastError();
    }
  }
  auto dkdv = attention_bwd_dkdv_kernel<K>;
  auto dq = attention_bwd_dq_kernel<K>;
  if ((err = allow_smem(dkdv, K::kSmemBytes)) != cudaSuccess || (err = allow_smem(dq, K::kSmemBytes)) != cudaSuccess)
    return err;
  if (f.seqlen_k > 0) {
    const dim3 grid(unsigned(f.batch * f.heads_kv), unsigned(ceil_div(f.seqlen_k, K::kBlockRows)), K::kDSplit);
    dkdv<<<grid, K::kThreads, K::kSmemBytes, stream>>>(p, delta);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  const dim3 grid_q(unsigned(f.batch * f.heads_q), unsigned(ceil_div(f.seqlen_q, K::kBlockRows)));
  dq<<<grid_q, K::kThreads, K::kSmemBytes, stream>>>(p, delta);
  return cudaGetLastError();
}

#define MMM_ATTENTION_INSTANTIATE(D)                                                                     \
  template cudaError_t launch_attention_fwd_t<D, __half>(const AttentionFwdParams&, cudaStream_t);         \
  template cudaError_t launch_attention_fwd_t<D, __nv_bfloat16>(const AttentionFwdParams&, cudaStream_t);  \
  template cudaError_t launch_attention_bwd_t<D, __half>(const AttentionBwdParams&, float*, float*, cudaStream_t); \
  template cudaError_t launch_attention_bwd_t<D, __nv_bfloat16>(const AttentionBwdParams&, float*, float*, cudaStream_t);

}  // namespace mmm
