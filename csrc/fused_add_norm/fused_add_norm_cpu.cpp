// fused_add_norm on the CPU: the same algorithm as the CUDA kernels (fused_add_norm_cpu_impl.h),
// compiled per instruction set (baseline, AVX2 + FMA + F16C, AVX-512) and picked at run time
// (core/cpu_variants.h). The caller parallelises over rows (forward) or over fixed row partitions
// (backward, so dweight/dbias do not depend on the thread count). Arithmetic in fp32 (fp64 for
// fp64 inputs, so gradcheck sees a float64 function).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/numeric.h"
#include "core/philox.h"
#include "fused_add_norm/activation.h"
#include "fused_add_norm/params.h"

#define MMM_CPU_IMPL "fused_add_norm/fused_add_norm_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

namespace {

int64_t dtype_bytes(DType t) { return t == DType::kFloat64 ? 8 : t == DType::kFloat32 ? 4 : 2; }

// An output the allocator has just mapped (any tensor over glibc's mmap threshold, up to 32 MB)
// faults in 4 KB at a time on first write, and in a VM each fault costs more than writing the
// page: most of the op's time for big tensors. Asking for transparent huge pages on the 2 MB
// chunks of the output that start in rows [r0, r1) (a hint; a no-op under THP "always" or
// "never", for pages already present, and for outputs under 2 MB) makes that one fault per 2 MB.
// Chunks are assigned by where they start so that concurrent calls on neighbouring rows advise
// each chunk once, before their first write to it.
void advise_huge_pages(void* data, int64_t rows, int64_t row_stride, int64_t cols, DType t, int64_t r0,
                       int64_t r1) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t k2M = uintptr_t(2) << 20;
  if (!data || r0 >= r1) return;
  const int64_t es = dtype_bytes(t);
  const uintptr_t base = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = (base + uintptr_t(((rows - 1) * row_stride + cols) * es)) & ~(k2M - 1);
  const uintptr_t a = (base + uintptr_t(r0 * row_stride * es) + k2M - 1) & ~(k2M - 1);
  uintptr_t e = (base + uintptr_t(r1 * row_stride * es) + k2M - 1) & ~(k2M - 1);
  if (e > end) e = end;
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)data, (void)rows, (void)row_stride, (void)cols, (void)t, (void)r0, (void)r1;
#endif
}

}  // namespace

void fused_add_norm_fwd_cpu(const FusedAddNormFwdParams& p, int64_t row_begin, int64_t row_end) {
  advise_huge_pages(p.out, p.rows, p.out_row_stride, p.cols, p.x_dtype, row_begin, row_end);
  advise_huge_pages(p.h_out, p.rows, p.h_row_stride, p.cols, p.h_dtype, row_begin, row_end);
  MMM_CPU_VARIANT(fwd, p, row_begin, row_end);
}

int64_t fused_add_norm_bwd_cpu_partitions(const FusedAddNormBwdParams& p) {
  return base::bwd_partitions(p);
}

size_t fused_add_norm_bwd_cpu_workspace_bytes(const FusedAddNormBwdParams& p) {
  const size_t elem = p.x_dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return size_t(fused_add_norm_bwd_cpu_partitions(p)) * 2 * size_t(p.cols) * elem;
}

void fused_add_norm_bwd_cpu_partition(const FusedAddNormBwdParams& p, int64_t partition) {
  const int64_t parts = fused_add_norm_bwd_cpu_partitions(p);
  const int64_t r0 = p.rows * partition / parts, r1 = p.rows * (partition + 1) / parts;
  advise_huge_pages(p.dx, p.rows, p.dx_row_stride, p.cols, p.x_dtype, r0, r1);
  advise_huge_pages(p.dresidual, p.rows, p.dres_row_stride, p.cols, p.h_dtype, r0, r1);
  MMM_CPU_VARIANT(bwd_partition, p, partition);
}

void fused_add_norm_bwd_cpu_finalize(const FusedAddNormBwdParams& p, int64_t col_begin, int64_t col_end) {
  MMM_CPU_VARIANT(bwd_finalize, p, col_begin, col_end);
}

}  // namespace mmm
