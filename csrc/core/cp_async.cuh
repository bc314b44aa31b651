// cp.async (sm_80+): global -> shared copies that do not pass through registers, so the next
// tile's loads overlap this tile's math (PTX ISA "cp.async", "commit_group", "wait_group").
#pragma once
#include <cstdint>

#include "core/mma.cuh"

namespace mmm {

// 16 bytes from gmem to smem; with pred false the 16 bytes are zero-filled (src-size 0) and
// gmem is not read, but must still be a valid address (the caller passes an in-bounds one).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(pred ? 16 : 0));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N of this thread's committed groups are still in flight. The data is then
// visible to this thread only: __syncthreads() before other threads read it.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace mmm
