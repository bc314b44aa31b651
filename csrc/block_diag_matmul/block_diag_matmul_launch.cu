// Entry point of the block GEMM on CUDA: dtype -> instantiation, grid, launch.
#include <cuda_runtime.h>

#include <algorithm>

#include "block_diag_matmul/block_diag_matmul_kernel.cuh"

namespace mmm {

namespace {
// y and z have hardware limits of 65535; the kernels stride over whatever does not fit.
template <typename Tile>
dim3 grid_for(const BlockGemm& g) {
  return dim3(unsigned(ceil_div(g.n, Tile::kN)), unsigned(std::min<int64_t>(ceil_div(g.m, Tile::kM), 65535)),
              unsigned(std::min<int64_t>(g.batch, 65535)));
}

template <typename T>
void launch(const BlockGemm& g, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (!g.simt_only) {
      block_gemm_mma_kernel<T><<<grid_for<BlockGemmMmaTile>(g), BlockGemmMmaTile::kThreads, 0, stream>>>(g);
      return;
    }
  }
  block_gemm_kernel<T><<<grid_for<BlockGemmTile>(g), BlockGemmTile::kThreads, 0, stream>>>(g);
}
}  // namespace

const char* launch_block_gemm(const BlockGemm& g, void* stream_ptr) {
  if (g.batch == 0 || g.m == 0 || g.n == 0) return nullptr;
  if (ceil_div(g.n, BlockGemmTile::kN) > 0x7fffffff) return "block_gemm: n too large";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (g.dtype) {
    case DType::kFloat32: launch<float>(g, stream); break;
    case DType::kFloat16: launch<__half>(g, stream); break;
    case DType::kBFloat16: launch<__nv_bfloat16>(g, stream); break;
    default: return "block_gemm: no CUDA kernel for float64";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
