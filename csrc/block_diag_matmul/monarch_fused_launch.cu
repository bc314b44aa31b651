// Entry point of the fused Monarch forward on CUDA: plan -> instantiation, shared memory opt-in,
// launch (the streaming kernel, or the cluster kernel where plan.cluster says so). The plan
// (monarch_fused.h) has already checked shapes, dtype, alignment and the device's shared-memory
// limit.
#include <cuda_runtime.h>

#include <climits>

#include "block_diag_matmul/monarch_cluster_kernel.cuh"
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

// Persistent: as many clusters as fit on the device at once (the occupancy API, which knows the
// GPCs' shapes), at most one per tile.
template <typename T, int kB>
const char* launch_cluster(const MonarchFused& f, const MonarchFusedPlan& plan, cudaStream_t stream) {
  using Tile = MonarchClusterTile<kB>;
  const auto kernel = monarch_cluster_kernel<T, kB>;
  if (plan.cluster != Tile::kC) return "monarch_fused: cluster size does not match the block size";
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
  if (err != cudaSuccess) return cudaGetErrorString(err);
  ClusterLaunch launch(unsigned(Tile::kC), unsigned(Tile::kThreads), size_t(plan.smem), stream, unsigned(Tile::kC));
  int active = 0;
  err = cudaOccupancyMaxActiveClusters(&active, kernel, &launch.config);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  if (active < 1) return "monarch_fused: no cluster of the resident-weight kernel fits on this device";
  const int64_t tiles = ceil_div(f.tokens, int64_t(Tile::kT));
  const int64_t clusters = tiles < active ? tiles : active;
  launch.config.gridDim = dim3(unsigned(clusters * Tile::kC));
  err = cudaLaunchKernelEx(&launch.config, kernel, f);
  if (err != cudaSuccess) return cudaGetErrorString(err);
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

bool monarch_fused_clusters(int device) { return runs_cluster_code<monarch_cluster_kernel<__nv_bfloat16, 64>>(device); }

const char* launch_monarch_fused(const MonarchFused& f, const MonarchFusedPlan& plan, void* stream_ptr) {
  if (f.tokens == 0) return nullptr;
  if (!plan.fused) return "monarch_fused: launched without a fused plan";
  const auto one_two_four = [](int g) { return g == 1 || g == 2 || g == 4; };
  if (!one_two_four(plan.units) || !one_two_four(plan.blocks))
    return "monarch_fused: units and blocks per step must be 1, 2 or 4";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (plan.cluster > 0) {
    const bool half = f.dtype == DType::kFloat16;
    if (f.dtype != DType::kFloat16 && f.dtype != DType::kBFloat16) return "monarch_fused: fp16/bf16 only";
    switch (f.p) {
      case 32: return half ? launch_cluster<__half, 32>(f, plan, stream) : launch_cluster<__nv_bfloat16, 32>(f, plan, stream);
      case 64: return half ? launch_cluster<__half, 64>(f, plan, stream) : launch_cluster<__nv_bfloat16, 64>(f, plan, stream);
      default: return "monarch_fused: the cluster kernel takes blocks of 32 or 64";
    }
  }
  switch (f.dtype) {
    case DType::kFloat16: return launch_bt<__half>(f, plan, stream);
    case DType::kBFloat16: return launch_bt<__nv_bfloat16>(f, plan, stream);
    default: return "monarch_fused: fp16/bf16 only";
  }
}

}  // namespace mmm
