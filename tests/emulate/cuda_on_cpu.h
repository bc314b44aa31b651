// CUDA on CPU threads: just enough of the CUDA language and runtime for the kernels' own source to
// compile with g++ and run on the host, so their index math can be checked against the CPU twins
// without a GPU. Used by the drivers next to this file (fft.cpp, fftconv.cpp, butterfly.cpp);
// build and run them with tests/emulate/run.sh.
//
// What it emulates
//   - __global__/__device__/__host__/__forceinline__/__launch_bounds__ compile away; __shared__
//     becomes `static` (blocks run one after another, so a static is the block's shared memory).
//   - launch_grid(grid, threads, smem_bytes, body): blocks one after another; each block runs
//     `threads` std::threads with a thread_local threadIdx.x (threads == 1: on the calling thread,
//     for drivers that run a block's work in one "thread"). Dynamic shared memory is a zeroed heap
//     block of exactly smem_bytes per launch (AddressSanitizer sees overruns), reached through
//     emu_dynamic_smem() / emu::smem.
//   - __syncthreads() = a barrier over the block; __syncwarp() = a barrier over the warp;
//     __shfl_xor_sync = an exchange through a warp barrier (float only, full warps, mask ignored).
//   - float2/float4, __half/__nv_bfloat16 and their conversions (the bit-exact CPU twins of
//     core/numeric.h), sincospif (long double), __brev, min/max, warp_sum/to_f/from_f of
//     core/cuda_utils.cuh, and the few runtime calls a launcher makes (device attributes from
//     emu::optin_smem / emu::sms, so a driver can shrink shared memory to force other paths).
// What it cannot catch
//   - races and missing barriers that happen to be harmless under the host scheduler, shared
//     memory bank conflicts, real warp timing / divergence / independent thread scheduling,
//     partial-warp masks, alignment faults, register pressure, and anything in PTX (mma, ldmatrix,
//     cp.async): those need tests/cuda/*.cu on a GPU (and compute-sanitizer).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/numeric.h"

#define MMM_FFT_HOST_EMULATION  // core/fft.cuh, fft/, fftconv/: skip cuda_runtime.h, use emu_dynamic_smem()
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
struct Dim3 { unsigned x = 0; };
inline thread_local Dim3 threadIdx;
inline Dim3 blockDim, blockIdx, gridDim;
using std::max;
using std::min;

namespace emu {
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<float> exchange;  // one slot per thread, for __shfl_xor_sync
inline void* smem = nullptr;         // this launch's dynamic shared memory
inline size_t max_smem_used = 0;
inline int max_block_threads = 1024;  // a driver may lower it to its kernels' __launch_bounds__
inline int optin_smem = 232448, sms = 132;  // what cudaDeviceGetAttribute reports (H100)

// One block of `threads` threads running body(); blockIdx/gridDim are the caller's to set.
template <class Body>
void launch_block(int threads, Body& body) {
  blockDim.x = unsigned(threads);
  if (threads == 1) {
    threadIdx.x = 0;
    body();
    return;
  }
  block_barrier = std::make_unique<std::barrier<>>(threads);
  warp_barriers.clear();
  for (int w = 0; w < threads / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  exchange.assign(size_t(threads), 0.f);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([t, &body] {
      threadIdx.x = unsigned(t);
      body();
    });
  for (auto& th : pool) th.join();
}
}  // namespace emu

// A kernel launch <<<grid, threads, smem_bytes>>>: body() is the kernel call.
template <class Body>
void launch_grid(int grid, int threads, size_t smem_bytes, Body body) {
  emu::max_smem_used = std::max(emu::max_smem_used, smem_bytes);
  std::unique_ptr<float4[]> mem(new float4[(smem_bytes + 15) / 16 + (smem_bytes == 0)]());  // 16-byte aligned
  emu::smem = mem.get();
  gridDim.x = unsigned(grid);
  for (int b = 0; b < grid; ++b) {
    blockIdx.x = unsigned(b);
    emu::launch_block(threads, body);
  }
  emu::smem = nullptr;
}

inline float2* emu_dynamic_smem() { return static_cast<float2*>(emu::smem); }
inline void __syncthreads() {
  if (blockDim.x > 1) emu::block_barrier->arrive_and_wait();
}
inline void __syncwarp() {
  if (blockDim.x > 1) emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait();
}
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const unsigned t = threadIdx.x, w = t / 32;
  emu::exchange[t] = v;
  emu::warp_barriers[w]->arrive_and_wait();
  const float r = emu::exchange[(t & ~31u) | ((t & 31u) ^ unsigned(mask))];
  emu::warp_barriers[w]->arrive_and_wait();
  return r;
}
inline void sincospif(float x, float* s, float* c) {
  const long double a = 3.141592653589793238462643383279502884L * x;
  *s = float(std::sin(a));
  *c = float(std::cos(a));
}
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int b = 0; b < 32; ++b) r |= ((v >> b) & 1u) << (31 - b);
  return r;
}

// fp16/bf16 storage and conversions, on the bit-exact CPU twins of core/numeric.h.
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
inline float __half2float(__half h) { return mmm::to_float(mmm::Half{h.bits}); }
inline float __bfloat162float(__nv_bfloat16 h) { return mmm::to_float(mmm::BFloat16{h.bits}); }
inline __half __float2half_rn(float f) { return {mmm::from_float<mmm::Half>(f).bits}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {mmm::from_float<mmm::BFloat16>(f).bits}; }

// The parts of core/cuda_utils.cuh the emulated kernels use (fp32 only).
namespace mmm {
inline float to_f(float v) { return v; }
template <typename U> inline U from_f(float v);
template <> inline float from_f<float>(float v) { return v; }
inline float warp_sum(float v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
}  // namespace mmm

// The runtime calls a launcher makes (csrc/<op>/<op>_launch.cu, rewritten by run.sh to call
// emu_launch instead of <<<...>>>).
typedef int cudaError_t;
typedef void* cudaStream_t;
enum {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 1,
  cudaDevAttrMultiProcessorCount = 2,
  cudaFuncAttributeMaxDynamicSharedMemorySize = 3
};
inline int cudaDeviceGetAttribute(int* v, int attr, int) {
  *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? emu::optin_smem : emu::sms;
  return cudaSuccess;
}
template <class K> int cudaFuncSetAttribute(K, int, int) { return cudaSuccess; }
inline int cudaGetLastError() { return cudaSuccess; }
inline int cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline const char* cudaGetErrorString(int) { return "emulation error"; }
inline int cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }

// kernel<<<grid, threads, smem_bytes>>>(args...) with the block's work done by `block_threads`
// emulated threads (1: the whole block in one thread, every barrier trivially held).
template <class K, class... A>
void emu_launch(int block_threads, K kernel, unsigned grid, int threads, size_t smem_bytes, A... args) {
  if (threads % 32 || threads > emu::max_block_threads || threads < 32) {
    std::fprintf(stderr, "emu_launch: bad block size %d\n", threads);
    throw "bad block size";
  }
  if (smem_bytes > size_t(emu::optin_smem)) {
    std::fprintf(stderr, "emu_launch: %zu bytes of shared memory over the limit %d\n", smem_bytes, emu::optin_smem);
    throw "shared memory over the limit";
  }
  launch_grid(int(grid), block_threads, smem_bytes, [&] { kernel(args...); });
}
