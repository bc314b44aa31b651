// Picks the kernel shape for a row length, sizes the grid, launches. Instantiated once per x dtype
// in instantiations/ so the three dtypes compile in parallel.
#pragma once
#include <cuda_runtime.h>

#include "fused_add_norm/fused_add_norm_kernel.cuh"

namespace mmm {

// Row shapes, by the number of 128-bit chunks in a row (chunks = ceil(N / kVec), kVec = 8 for
// fp16/bf16 and 4 for fp32). Forward holds 4 chunks per thread in registers; backward holds 2,
// because it keeps xhat, dxhat and the dweight/dbias sums per element (4x the live registers).
//   forward:  <= 128 chunks: a warp per row | <= 512: 4 warps | <= 2048: 16 warps | else looped
//   backward: <=  64 chunks: a warp per row | <= 256: 4 warps | <= 1024: 16 warps | else looped
// so bf16 rows up to N = 16384 (fp32: 8192) are read from HBM exactly once in the forward.
enum class RowShape { kWarp, kWarps4, kWarps16, kLooped };

inline RowShape pick_row_shape(int64_t chunks, int chunks_per_thread) {
  if (chunks <= 32 * chunks_per_thread) return RowShape::kWarp;
  if (chunks <= 128 * chunks_per_thread) return RowShape::kWarps4;
  if (chunks <= 512 * chunks_per_thread) return RowShape::kWarps16;
  return RowShape::kLooped;
}
constexpr int kFwdChunksPerThread = 4;
constexpr int kBwdChunksPerThread = 2;
constexpr int kLoopedWarps = 16;

// Calls f with the traits type of the chosen shape.
template <typename T, typename TH, typename TW, int kChunksPerThread, typename F>
void with_row_shape(RowShape shape, F&& f) {
  switch (shape) {
    case RowShape::kWarp: f(FusedAddNormTraits<T, TH, TW, 1, kChunksPerThread>{}); break;
    case RowShape::kWarps4: f(FusedAddNormTraits<T, TH, TW, 4, kChunksPerThread>{}); break;
    case RowShape::kWarps16: f(FusedAddNormTraits<T, TH, TW, 16, kChunksPerThread>{}); break;
    case RowShape::kLooped: f(FusedAddNormTraits<T, TH, TW, kLoopedWarps, 0>{}); break;
  }
}

// Enough CTAs to fill every SM once at full occupancy; each then strides over rows. The
// device query is cached per (kernel, device): it would otherwise cost microseconds per launch.
// The kernel is a template argument so that each gets its own cache (all forward kernels share
// one function-pointer type, and so do all backward ones).
template <auto kernel>
int64_t persistent_grid(int threads, int64_t row_groups, int device) {
  constexpr int kMaxDevices = 64;
  static int resident[kMaxDevices] = {};  // CTAs resident at once; 0 = not asked yet
  int full = device >= 0 && device < kMaxDevices ? resident[device] : 0;
  if (full == 0) {
    int sms = 0, per_sm = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0);
    full = sms * (per_sm > 0 ? per_sm : 1);
    if (device >= 0 && device < kMaxDevices) resident[device] = full;
  }
  return row_groups < full ? row_groups : int64_t(full);
}

// 16-byte vector access is allowed iff every row of every operand starts 16-byte aligned
// (rows_aligned, core/cuda_utils.cuh).
template <typename T, typename TH, typename TW>
const char* launch_fwd_t(const FusedAddNormFwdParams& p, cudaStream_t stream, int device) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = rows_aligned(p.x, p.x_row_stride, sizeof(T)) &&
                   rows_aligned(p.residual, p.res_row_stride, sizeof(TH)) &&
                   rows_aligned(p.out, p.out_row_stride, sizeof(T)) &&
                   rows_aligned(p.h_out, p.h_row_stride, sizeof(TH)) &&
                   rows_aligned(p.weight, 0, sizeof(TW)) && rows_aligned(p.bias, 0, sizeof(TW));
  const RowShape shape = pick_row_shape(ceil_div(p.cols, kVec), kFwdChunksPerThread);
  with_row_shape<T, TH, TW, kFwdChunksPerThread>(shape, [&](auto traits) {
    using K = decltype(traits);
    constexpr auto kernel = fused_add_norm_fwd_kernel<K>;
    const int64_t grid = persistent_grid<kernel>(K::kThreads, ceil_div(p.rows, K::kRowsPerCta), device);
    if (grid > 0) kernel<<<unsigned(grid), K::kThreads, 0, stream>>>(p, vec);
  });
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// The backward's launch plan, shared by the workspace query and the launch so they agree.
struct BwdPlan {
  RowShape shape;
  int64_t grid;        // CTAs of the row kernel
  int64_t partials;    // partial rows in the workspace
  int64_t dwdb_slices; // looped shape only: row slices of the column kernel
};

template <typename T, typename TH, typename TW>
BwdPlan plan_bwd_t(const FusedAddNormBwdParams& p, int device) {
  constexpr int kVec = 16 / sizeof(T);
  BwdPlan plan{pick_row_shape(ceil_div(p.cols, kVec), kBwdChunksPerThread), 0, 0, 0};
  with_row_shape<T, TH, TW, kBwdChunksPerThread>(plan.shape, [&](auto traits) {
    using K = decltype(traits);
    plan.grid = persistent_grid<fused_add_norm_bwd_kernel<K>>(K::kThreads, ceil_div(p.rows, K::kRowsPerCta), device);
    if constexpr (K::kCached) {
      plan.partials = plan.grid;  // one partial row per CTA
    } else {
      int sms = 0;
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      const int64_t col_tiles = ceil_div(p.cols, 256);
      const int64_t want = ceil_div(int64_t(sms) * 8, col_tiles);  // ~8 CTAs of 256 per SM
      plan.dwdb_slices = want < p.rows ? want : p.rows;
      plan.partials = plan.dwdb_slices;
    }
  });
  return plan;
}

template <typename T, typename TH, typename TW>
size_t bwd_workspace_bytes_t(const FusedAddNormBwdParams& p, int device) {
  if (!p.dweight && !p.dbias) return 0;
  return size_t(plan_bwd_t<T, TH, TW>(p, device).partials) * 2 * size_t(p.cols) * sizeof(float);
}

template <typename T, typename TH, typename TW>
const char* launch_bwd_t(const FusedAddNormBwdParams& p, cudaStream_t stream, int device) {
  const bool vec = rows_aligned(p.h, p.h_row_stride, sizeof(TH)) &&
                   rows_aligned(p.dout, p.dout_row_stride, sizeof(T)) &&
                   rows_aligned(p.dh_out, p.dh_out_row_stride, sizeof(TH)) &&
                   rows_aligned(p.dx, p.dx_row_stride, sizeof(T)) &&
                   rows_aligned(p.dresidual, p.dres_row_stride, sizeof(TH)) &&
                   rows_aligned(p.weight, 0, sizeof(TW)) && rows_aligned(p.bias, 0, sizeof(TW));
  const BwdPlan plan = plan_bwd_t<T, TH, TW>(p, device);
  const bool want_dwdb = p.dweight || p.dbias;
  with_row_shape<T, TH, TW, kBwdChunksPerThread>(plan.shape, [&](auto traits) {
    using K = decltype(traits);
    if (plan.grid > 0)
      fused_add_norm_bwd_kernel<K><<<unsigned(plan.grid), K::kThreads, 0, stream>>>(p, vec);
    if constexpr (!K::kCached) {
      if (want_dwdb && plan.dwdb_slices > 0) {
        const dim3 grid(unsigned(ceil_div(p.cols, 256)), unsigned(plan.dwdb_slices));
        fused_add_norm_bwd_dwdb_kernel<K><<<grid, 256, 0, stream>>>(p);
      }
    }
  });
  if (want_dwdb)
    fused_add_norm_reduce_dwdb_kernel<TW><<<unsigned(ceil_div(p.cols, 32)), 256, 0, stream>>>(
        static_cast<const float*>(p.workspace), plan.partials, p.cols,
        static_cast<TW*>(p.dweight), static_cast<TW*>(p.dbias));
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Explicit instantiations live in instantiations/fused_add_norm_<dtype>.cu.
#define MMM_FUSED_ADD_NORM_INSTANTIATE(T, TH, TW)                                             \
  template const char* launch_fwd_t<T, TH, TW>(const FusedAddNormFwdParams&, cudaStream_t, int); \
  template size_t bwd_workspace_bytes_t<T, TH, TW>(const FusedAddNormBwdParams&, int);           \
  template const char* launch_bwd_t<T, TH, TW>(const FusedAddNormBwdParams&, cudaStream_t, int);

}  // namespace mmm
