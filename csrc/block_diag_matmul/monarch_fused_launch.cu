// Entry point of the fused Monarch forward on CUDA: plan -> instantiation, shared memory opt-in,
// launch. The plan (monarch_fused.h) has already checked shapes, dtype, alignment and the
// device's shared-memory limit.
#include <cuda_runtime.h>

#include <climits>

#include "block_diag_matmul/monarch_fused_kernel.cuh"

namespace mmm {

namespace {
template <typename T, int kMT>
const char* launch(const MonarchFused& f, const MonarchFusedPlan& plan, cudaStream_t stream) {
  const auto kernel = monarch_fused_kernel<T, kMT>;
  // Above 48 KB a kernel must opt in; the plan never asks for more than the device allows.
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  const int64_t ctas = ceil_div(f.tokens, MonarchFusedTile<kMT>::kBT);
  if (ctas > INT_MAX) return "monarch_fused: too many tokens for one launch";
  kernel<<<unsigned(ctas), kMonarchThreads, size_t(plan.smem), stream>>>(f, plan.chunk, plan.units, plan.blocks);
  err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename T>
const char* launch_bt(const MonarchFused& f, const MonarchFusedPlan& plan, cudaStream_t stream) {
  switch (plan.bt) {
    case 16: return launch<T, 1>(f, plan, stream);
    case 32: return launch<T, 2>(f, plan, stream);
    default: return "monarch_fused: tokens per CTA must be 16 or 32";
  }
}
}  // namespace

int64_t monarch_fused_smem_limit(int device) {
  int v = 0;
  return cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess ? v : 0;
}

const char* launch_monarch_fused(const MonarchFused& f, const MonarchFusedPlan& plan, void* stream_ptr) {
  if (f.tokens == 0) return nullptr;
  if (!plan.fused) return "monarch_fused: launched without a fused plan";
  const auto one_two_four = [](int g) { return g == 1 || g == 2 || g == 4; };
  if (!one_two_four(plan.units) || !one_two_four(plan.blocks))
    return "monarch_fused: units and blocks per step must be 1, 2 or 4";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (f.dtype) {
    case DType::kFloat16: return launch_bt<__half>(f, plan, stream);
    case DType::kBFloat16: return launch_bt<__nv_bfloat16>(f, plan, stream);
    default: return "monarch_fused: fp16/bf16 only";
  }
}

}  // namespace mmm
