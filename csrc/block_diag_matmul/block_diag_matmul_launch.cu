// Entry point of the block GEMM on CUDA: dtype and operand layouts -> instantiation, grid,
// split-K, launch.
#include <cuda_runtime.h>

#include <algorithm>

#include "block_diag_matmul/block_diag_matmul_kernel.cuh"

namespace mmm {

namespace {
// y and z have hardware limits of 65535; the kernels stride over whatever does not fit. With
// split-K, z holds splits x (a share of the blocks).
template <typename Tile>
dim3 grid_for(const BlockGemm& g, int splits = 1) {
  const int64_t zb = std::max<int64_t>(1, std::min<int64_t>(g.batch, 65535 / splits));
  return dim3(unsigned(ceil_div(g.n, Tile::kN)), unsigned(std::min<int64_t>(ceil_div(g.m, Tile::kM), 65535)),
              unsigned(zb * splits));
}

template <typename T, bool kAkm, bool kBkn>
void launch_mma(const BlockGemm& g, cudaStream_t stream) {
  block_gemm_mma_kernel<T, kAkm, kBkn>
      <<<grid_for<BlockGemmMmaTile>(g, g.splits), BlockGemmMmaTile::kThreads, 0, stream>>>(g);
  if (g.splits > 1) {
    const int64_t total = g.batch * g.m * g.n;
    const unsigned blocks = unsigned(std::min<int64_t>(ceil_div(total, 256), 65535));
    block_gemm_split_reduce_kernel<T><<<blocks, 256, 0, stream>>>(g);
  }
}

template <typename T>
void launch(const BlockGemm& g, cudaStream_t stream) {
  if constexpr (!std::is_same_v<T, float>) {
    if (!g.simt_only) {
      // Stage each operand with its unit-stride dimension innermost (see the kernel).
      const bool a_km = g.a_ms == 1 && g.a_ks != 1, b_kn = g.b_ns == 1 && g.b_ks != 1;
      if (a_km && b_kn) launch_mma<T, true, true>(g, stream);
      else if (a_km) launch_mma<T, true, false>(g, stream);
      else if (b_kn) launch_mma<T, false, true>(g, stream);
      else launch_mma<T, false, false>(g, stream);
      return;
    }
  }
  block_gemm_kernel<T><<<grid_for<BlockGemmTile>(g), BlockGemmTile::kThreads, 0, stream>>>(g);
}
}  // namespace

int block_gemm_cuda_splits(const BlockGemm& g) {
  if (g.simt_only || g.dtype == DType::kFloat32 || g.dtype == DType::kFloat64) return 1;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 1;
  return block_gemm_splits(g, sms);
}

const char* launch_block_gemm(const BlockGemm& g, void* stream_ptr) {
  if (g.batch == 0 || g.m == 0 || g.n == 0) return nullptr;
  if (ceil_div(g.n, BlockGemmTile::kN) > 0x7fffffff) return "block_gemm: n too large";
  if (g.splits < 1 || g.splits > 1024) return "block_gemm: splits must be in 1..1024";
  if (g.splits > 1 && (g.workspace == nullptr || g.simt_only || g.dtype == DType::kFloat32))
    return "block_gemm: split-K needs a workspace and the tensor-core kernel";
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (g.dtype) {
    case DType::kFloat32: launch<float>(g, stream); break;
    case DType::kFloat16: launch<__half>(g, stream); break;
    case DType::kBFloat16: launch<__nv_bfloat16>(g, stream); break;
    default: return "block_gemm: no CUDA kernel for this dtype";
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace mmm
