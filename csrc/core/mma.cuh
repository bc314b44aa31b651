// Tensor-core primitives (sm_80+): ldmatrix and mma.sync m16n8k16 with fp32 accumulation.
// Fragment layouts (PTX ISA "Matrix Fragments for mma.m16n8k16"; ../shared/PTX-NOTES.md):
//   l = lane, g = l / 4, t = l % 4
//   A (16x16, row-major): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16x8, "col": stored as [n][k]): b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16x8 fp32): c[i] = (row g + 8*(i/2), col 2t + i%2)
// Checked against a CPU matmul by tests/cuda/test_core_primitives.cu.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace mmm {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8j..8j+7 give the row addresses of matrix j (16 bytes each,
// 16-byte aligned). Register j receives matrix j: lane l holds row l/4, cols 2(l%4), 2(l%4)+1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
#elif defined(__CUDA_ARCH__)
  __trap();  // built for an architecture without ldmatrix: fail loudly, never return garbage
#endif
}

// As ldmatrix_x4, transposed: lane l receives M[2(l%4)][l/4] (low) and M[2(l%4)+1][l/4] (high)
// of matrix j in register j, i.e. row l/4 of M's transpose.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// D = A * B + D for one m16n8k16 tile; T is __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: fp16 or bf16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // fp16/bf16 mma.sync needs sm_80
#endif
}

// The A fragment of the 16x16 tile at (row0, col0) of a row-major [m][k] shared tile with a
// row pitch of `pitch` elements: lane l addresses row row0 + l%16, column col0 + 8*(l/16).
template <typename T>
__device__ __forceinline__ void load_a_frag(uint32_t (&a)[4], const T* tile, int pitch, int row0, int col0) {
  const int l = threadIdx.x % 32;
  ldmatrix_x4(a, tile + (row0 + l % 16) * pitch + col0 + 8 * (l / 16));
}

// B fragments of two adjacent n8 tiles (n0 and n0+8) over k0..k0+15 of a [n][k] shared tile:
// lane l addresses row n0 + l%8 + 8*(l/16), column k0 + 8*((l/8)%2).
// b_lo receives tile n0's {b0, b1}, b_hi tile n0+8's.
template <typename T>
__device__ __forceinline__ void load_b_frags(uint32_t (&b_lo)[2], uint32_t (&b_hi)[2], const T* tile, int pitch,
                                             int n0, int k0) {
  const int l = threadIdx.x % 32;
  uint32_t r[4];
  ldmatrix_x4(r, tile + (n0 + l % 8 + 8 * (l / 16)) * pitch + k0 + 8 * ((l / 8) % 2));
  b_lo[0] = r[0];
  b_lo[1] = r[1];
  b_hi[0] = r[2];
  b_hi[1] = r[3];
}

// B fragments of two adjacent n8 tiles (n0, n0+8) over k0..k0+15 of a ROW-major [k][n] shared
// tile (B stored as it multiplies, e.g. V in P·V): ldmatrix .trans, lane l addresses row
// k0 + l%16, column n0 + 8*(l/16).
template <typename T>
__device__ __forceinline__ void load_b_frags_kn(uint32_t (&b_lo)[2], uint32_t (&b_hi)[2], const T* tile, int pitch,
                                                int k0, int n0) {
  const int l = threadIdx.x % 32;
  uint32_t r[4];
  ldmatrix_x4_trans(r, tile + (k0 + l % 16) * pitch + n0 + 8 * (l / 16));
  b_lo[0] = r[0];
  b_lo[1] = r[1];
  b_hi[0] = r[2];
  b_hi[1] = r[3];
}

// Two fp32 values as one register of two 16-bit values, the first in the low half: the A
// operand of an mma built from accumulators (P in P·V).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

}  // namespace mmm
