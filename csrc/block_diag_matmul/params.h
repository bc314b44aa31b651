// block_diag_matmul and monarch_matmul as strided batched GEMMs.
//
// Every product these ops need (forward, dx, dweight, and both Monarch stages with their
// permutations) is one "block GEMM": for every block b,
//     C[b][i][j] = sum_p A[b][i][p] * B[b][p][j]
// with arbitrary element strides on every index, so the Monarch permutation and the
// transposes of the backward are strides rather than copies. Accumulation in fp32 (fp64 for
// fp64 inputs on the CPU); every C element is one dot product in a fixed order, so results,
// dweight included, are deterministic.
//
// The descriptors below say which GEMMs each op runs; the CPU twin and the CUDA kernel run a
// descriptor. Plain structs: shared by the CPU twin, the CUDA launcher and the C++ benchmark.
#pragma once
#include <cstddef>
#include "core/common.h"

namespace mmm {

struct BlockGemm {
  int64_t batch = 0, m = 0, n = 0, k = 0;  // blocks; C is (m, n) per block; reduction over k
  const void* a = nullptr; int64_t a_bs = 0, a_ms = 0, a_ks = 0;  // A[b][i][p] at a + b*a_bs + i*a_ms + p*a_ks
  const void* b = nullptr; int64_t b_bs = 0, b_ks = 0, b_ns = 0;  // B[b][p][j] at b + b*b_bs + p*b_ks + j*b_ns
  void* c = nullptr;       int64_t c_bs = 0, c_ms = 0, c_ns = 0;  // C[b][i][j]
  DType dtype = DType::kFloat32;  // of A, B and C
  bool simt_only = false;          // CUDA: skip the tensor-core kernel (MMM_DISABLE_TENSOR_CORES=1)
  // CUDA split-K (the tensor-core kernel): splits > 1 cuts the reduction into `splits` ranges,
  // each CTA writes its fp32 partial C to workspace[split][batch][m][n], and a second kernel sums
  // the partials in split order: parallel over the reduction, no atomics, bitwise reproducible
  // for a given splits. The caller allocates splits*batch*m*n floats (block_gemm_cuda_splits).
  int splits = 1;
  float* workspace = nullptr;
};

// How many reduction ranges a GEMM gets on a GPU with num_sms SMs: only when its output tiles
// alone cannot fill the GPU (a dweight: C is one block, the reduction runs over every token),
// about two CTAs per SM, and at least 8 K-tiles of 32 per range so partials stay cheap.
inline int block_gemm_splits(const BlockGemm& g, int num_sms) {
  const int64_t tiles = ceil_div(g.n, 64) * ceil_div(g.m, 128) * g.batch, ktiles = ceil_div(g.k, 32);
  if (tiles >= num_sms || ktiles < 16) return 1;
  int64_t s = ceil_div(2 * int64_t(num_sms), tiles);
  s = s < ktiles / 8 ? s : ktiles / 8;
  return int(s < 1 ? 1 : s > 64 ? 64 : s);
}

// x: (tokens, nb*k) with row stride x_rs; w: (nb, n, k) contiguous; y: (tokens, nb*n).
// y[t, b*n + i] = sum_c x[t, b*k + c] * w[b, i, c]
inline BlockGemm block_diag_fwd(const void* x, int64_t x_rs, const void* w, void* y, int64_t y_rs,
                                int64_t tokens, int64_t nb, int64_t n, int64_t k, DType dt) {
  return {nb, tokens, n, k, x, k, x_rs, 1, w, n * k, 1, k, y, n, y_rs, 1, dt};
}
// dx[t, b*k + c] = sum_i dy[t, b*n + i] * w[b, i, c]
inline BlockGemm block_diag_dx(const void* dy, int64_t dy_rs, const void* w, void* dx, int64_t dx_rs,
                               int64_t tokens, int64_t nb, int64_t n, int64_t k, DType dt) {
  return {nb, tokens, k, n, dy, n, dy_rs, 1, w, n * k, k, 1, dx, k, dx_rs, 1, dt};
}
// dw[b, i, c] = sum_t dy[t, b*n + i] * x[t, b*k + c]
inline BlockGemm block_diag_dw(const void* dy, int64_t dy_rs, const void* x, int64_t x_rs, void* dw,
                               int64_t tokens, int64_t nb, int64_t n, int64_t k, DType dt) {
  return {nb, n, k, tokens, dy, n, 1, dy_rs, x, k, x_rs, 1, dw, n * k, k, 1, dt};
}

// Monarch (HazyResearch/fly's blockdiag_butterfly_multiply): w1 (k1b, q, p), w2 (l, s, r) with
// l*r == k1b*q. Stage 1 is block_diag_fwd(x, w1) -> u (tokens, k1b*q). Stage 2 reads block j's
// input as u[t, i*l + j] (i < r) - the 'b (r l) -> b (l r)' permutation - and writes its output
// t' as y[t, t'*l + j] - the 'b (l s) -> b (s l)' one. Both are strides: block stride 1,
// element stride l.
inline BlockGemm monarch_stage2_fwd(const void* u, int64_t u_rs, const void* w2, void* y, int64_t y_rs,
                                    int64_t tokens, int64_t l, int64_t s, int64_t r, DType dt) {
  return {l, tokens, s, r, u, 1, u_rs, l, w2, s * r, 1, r, y, 1, y_rs, l, dt};
}
// du[t, i*l + j] = sum_t' dy[t, t'*l + j] * w2[j, t', i]
inline BlockGemm monarch_stage2_dx(const void* dy, int64_t dy_rs, const void* w2, void* du, int64_t du_rs,
                                   int64_t tokens, int64_t l, int64_t s, int64_t r, DType dt) {
  return {l, tokens, r, s, dy, 1, dy_rs, l, w2, s * r, r, 1, du, 1, du_rs, l, dt};
}
// dw2[j, t', i] = sum_t dy[t, t'*l + j] * u[t, i*l + j]
inline BlockGemm monarch_stage2_dw(const void* dy, int64_t dy_rs, const void* u, int64_t u_rs, void* dw2,
                                   int64_t tokens, int64_t l, int64_t s, int64_t r, DType dt) {
  return {l, s, r, tokens, dy, 1, l, dy_rs, u, 1, u_rs, l, dw2, s * r, r, 1, dt};
}

// ---- CPU twin (block_diag_matmul_cpu.cpp): tasks so the caller brings its thread pool ------
constexpr int64_t kBlockGemmCpuRows = 64;  // rows of C per task
// Blocks per task: 1, or 16 where an operand's blocks are interleaved element by element (block
// stride 1: Monarch's second stage), so that its reads and writes move runs of 16 elements, not
// one element per cache line.
inline int64_t block_gemm_cpu_group(const BlockGemm& g) {
  const bool interleaved = g.a_bs == 1 || g.b_bs == 1 || g.c_bs == 1;
  return interleaved && g.batch > 1 ? (g.batch < 16 ? g.batch : 16) : 1;
}
int64_t block_gemm_cpu_tasks(const BlockGemm& g);
void block_gemm_cpu(const BlockGemm& g, int64_t task_begin, int64_t task_end);

// ---- CUDA (block_diag_matmul_launch.cu): nullptr on success, else a static message ----------
const char* launch_block_gemm(const BlockGemm& g, void* stream);
// The splits launch_block_gemm would like for g on the current device (1 where the kernel that
// runs g has no split-K: fp32, simt_only).
int block_gemm_cuda_splits(const BlockGemm& g);

}  // namespace mmm
