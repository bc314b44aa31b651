// Thread-block clusters (sm_90+): a CTA's rank in its cluster, the cluster-wide barrier, and
// stores into another CTA's shared memory (distributed shared memory). PTX ISA "mapa",
// "barrier.cluster", "ld" / "st" with .shared::cluster, special register %cluster_ctarank.
// A kernel that uses them must be launched with a cluster dimension (ClusterLaunch below);
// built for an older architecture they trap.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "core/mma.cuh"

namespace mmm {

// This CTA's rank in its cluster (0 .. cluster size - 1; blockIdx.x % size for 1-D clusters).
__device__ __forceinline__ unsigned cluster_ctarank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
  return rank;
#elif defined(__CUDA_ARCH__)
  __trap();
  return 0;
#else
  return 0;
#endif
}

// The cluster barrier, split: every thread of every CTA of the cluster arrives, may work on, then
// waits for all arrivals. What a thread wrote to any CTA's shared memory (or global memory)
// before arriving is visible to every thread after its wait (arrive has release, wait acquire
// semantics); what it does between the two is ordered with nobody's. Each thread alternates
// arrive and wait; all threads of a warp execute each together.
__device__ __forceinline__ void cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}
__device__ __forceinline__ void cluster_sync() {
  cluster_arrive();
  cluster_wait();
}

// The shared::cluster address of the location of CTA `rank`'s shared memory that corresponds to
// `local` in this CTA's (the same offset in the same variable): what the loads and stores below
// take.
__device__ __forceinline__ uint32_t cluster_map(const void* local, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
  return remote;
#elif defined(__CUDA_ARCH__)
  __trap();
  return 0;
#else
  return 0;
#endif
}

// Stores `value` at the location of CTA `rank`'s shared memory that corresponds to `local` in
// this CTA's. `local` must be 4-byte aligned.
__device__ __forceinline__ void cluster_store_u32(const void* local, unsigned rank, uint32_t value) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(cluster_map(local, rank)), "r"(value) : "memory");
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// Loads the 8 bytes at the location of CTA `rank`'s shared memory that corresponds to `local` in
// this CTA's. `local` must be 8-byte aligned.
__device__ __forceinline__ uint64_t cluster_load_u64(const void* local, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint64_t value;
  asm volatile("ld.shared::cluster.u64 %0, [%1];\n" : "=l"(value) : "r"(cluster_map(local, rank)) : "memory");
  return value;
#elif defined(__CUDA_ARCH__)
  __trap();
  return 0;
#else
  return 0;
#endif
}

// The 16 bytes (four floats) at the location of CTA `rank`'s shared memory that corresponds to
// `local` in this CTA's. `local` must be 16-byte aligned.
__device__ __forceinline__ float4 cluster_load_f4(const float* local, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  float4 v;
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(cluster_map(local, rank))
               : "memory");
  return v;
#elif defined(__CUDA_ARCH__)
  __trap();
  return make_float4(0.f, 0.f, 0.f, 0.f);
#else
  return make_float4(0.f, 0.f, 0.f, 0.f);
#endif
}

// Whether kKernel runs its sm_90 code on `device`: compute capability 9 or newer, and a binary
// built with sm_90 code (a build for older architectures only has the trapping stubs above).
// Asked once per (kernel, device): the launchers ask on every call, and the two driver queries
// cost microseconds.
template <auto kKernel>
bool runs_cluster_code(int device) {
  const auto ask = [device] {
    int major = 0;
    cudaFuncAttributes attrs;
    return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 9 &&
           cudaFuncGetAttributes(&attrs, kKernel) == cudaSuccess && attrs.binaryVersion >= 90 && attrs.ptxVersion >= 90;
  };
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices];  // 0: not asked yet, 1: no, 2: yes
  if (device < 0 || device >= kMaxDevices) return ask();
  int k = known[device].load(std::memory_order_relaxed);
  if (k == 0) {
    k = ask() ? 2 : 1;
    known[device].store(k, std::memory_order_relaxed);
  }
  return k == 2;
}

// cudaLaunchKernelEx's configuration for a 1-D grid of `ctas` CTAs in clusters of `cluster` along x
// (ctas a multiple of it): cudaLaunchKernelEx(&launch.config, kernel, args...), or
// cudaOccupancyMaxActiveClusters(&n, kernel, &launch.config). Not copyable: config points at attr.
struct ClusterLaunch {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t config;
  ClusterLaunch(unsigned ctas, unsigned threads, size_t smem, cudaStream_t stream, unsigned cluster) : config{} {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.gridDim = dim3(ctas);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

}  // namespace mmm
