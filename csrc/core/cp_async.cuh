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

// Which (row, chunk) the c-th 16-byte copy of a tile of `rows` x `cpr` chunks writes, for a copy
// loop whose consecutive c run on consecutive lanes, into shared rows whose pitch is an odd
// multiple of 16 bytes (the padded layouts that keep ldmatrix conflict-free). A quarter warp's
// eight 16-byte stores take one 128-byte wavefront only when they hit the eight 16-byte bank
// groups once each. Row-major order hands a quarter 8 / cpr consecutive rows, which collide for
// cpr = 2 or 4 (row r + 1 starts an odd number of groups after row r, so its chunks wrap onto
// row r's); rows cpr apart start cpr * (odd) groups apart and tile the eight groups exactly.
// cpr >= 8 (a quarter writes 128 contiguous bytes), cpr not a power of two, or rows not a
// multiple of 8: row-major. Global reads coalesce as before: a row's chunks go to adjacent lanes.
__device__ __forceinline__ void padded_tile_chunk(int c, int cpr, int rows, int& row, int& chunk) {
  chunk = c % cpr;
  if (cpr >= 8 || (cpr & (cpr - 1)) || rows % 8) {
    row = c / cpr;
    return;
  }
  const int quarter_row = (c / cpr) % (8 / cpr);  // which of the quarter's rows
  const int quarter = (c / 8) % cpr;              // which quarter of the 8-row band
  row = (c / (8 * cpr)) * 8 + quarter_row * cpr + quarter;
}

}  // namespace mmm
