#include <cstdio>
// Host shim for csrc/butterfly/emulate/run.sh: the CUDA kernels' C++ run sequentially on the CPU
// (blockDim.x = 1, so every barrier holds trivially and each thread-strided loop does all of its
// work in one "thread"), shared memory an exact-size heap block per launch so ASan sees overruns,
// and the device's shared-memory limit a variable, so small limits force the multi-pass paths.
// What this cannot see: races between threads, warp-level behaviour, real alignment faults.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include "core/numeric.h"
#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(x)
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
struct Dim { unsigned x = 0; };
inline Dim threadIdx, blockIdx, blockDim, gridDim;
inline void __syncthreads() {}
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __half2float(__half h) { return mmm::to_float(mmm::Half{h.bits}); }
inline float __bfloat162float(__nv_bfloat16 h) { return mmm::to_float(mmm::BFloat16{h.bits}); }
inline __half __float2half_rn(float f) { return {mmm::from_float<mmm::Half>(f).bits}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {mmm::from_float<mmm::BFloat16>(f).bits}; }
using std::min;
using std::max;
typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaDevAttrMaxSharedMemoryPerBlockOptin = 1, cudaDevAttrMultiProcessorCount = 2, cudaFuncAttributeMaxDynamicSharedMemorySize = 3 };
inline int g_optin = 232448, g_sms = 132;
inline size_t g_max_smem_used = 0;
inline int cudaDeviceGetAttribute(int* v, int attr, int) { *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? g_optin : g_sms; return 0; }
template <class K> int cudaFuncSetAttribute(K, int, int) { return 0; }
inline int cudaGetLastError() { return 0; }
inline int cudaGetDevice(int* d) { *d = 0; return 0; }
inline const char* cudaGetErrorString(int) { return "emu error"; }
inline int cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return 0; }
inline float4* g_smem_ptr = nullptr;
template <class K, class... A> void emu_launch(K kernel, unsigned grid, int threads, size_t smem, A... args) {
  if (threads % 32 || threads > 256 || threads < 32) { fprintf(stderr, "bad threads %d\n", threads); throw "bad threads"; }
  if (smem > size_t(g_optin)) { fprintf(stderr, "smem %zu over optin %d\n", smem, g_optin); throw "smem"; }
  g_max_smem_used = std::max(g_max_smem_used, smem);
  float4* mem = new float4[(smem + 15) / 16 + (smem == 0)];
  g_smem_ptr = mem;
  gridDim.x = grid; blockDim.x = 1; threadIdx.x = 0;
  for (unsigned b = 0; b < grid; ++b) { blockIdx.x = b; kernel(args...); }
  delete[] mem;
}
