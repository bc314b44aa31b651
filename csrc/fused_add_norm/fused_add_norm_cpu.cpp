// fused_add_norm on the CPU: the same algorithm as the CUDA kernels (fused_add_norm_cpu_impl.h),
// compiled twice - for baseline x86-64 / any other CPU, and for AVX2 + FMA + F16C - and picked at
// run time (core/cpu_features.h). The caller parallelises
// over rows (forward) or over fixed row partitions (backward, so dweight/dbias do not depend on
// the thread count). Arithmetic in fp32 (fp64 for fp64 inputs, so gradcheck sees a float64
// function).
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/cpu_features.h"
#include "core/numeric.h"
#include "core/philox.h"
#include "fused_add_norm/activation.h"
#include "fused_add_norm/params.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mmm {

namespace base {
#include "fused_add_norm/fused_add_norm_cpu_impl.h"
}  // namespace base

#if defined(__x86_64__)
// Everything up to here (std, numeric.h, ...) was compiled for the baseline target, so no
// AVX2 code can leak into an inline function the two variants share.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define MMM_CPU_F16C 1
namespace avx2 {
#include "fused_add_norm/fused_add_norm_cpu_impl.h"
}  // namespace avx2
#undef MMM_CPU_F16C
#pragma GCC pop_options

#define MMM_CPU_CALL(fn, ...) (cpu_has_avx2_fma_f16c() ? avx2::fn(__VA_ARGS__) : base::fn(__VA_ARGS__))
#else
#define MMM_CPU_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

void fused_add_norm_fwd_cpu(const FusedAddNormFwdParams& p, int64_t row_begin, int64_t row_end) {
  MMM_CPU_CALL(fwd, p, row_begin, row_end);
}

int64_t fused_add_norm_bwd_cpu_partitions(const FusedAddNormBwdParams& p) {
  return base::bwd_partitions(p);
}

size_t fused_add_norm_bwd_cpu_workspace_bytes(const FusedAddNormBwdParams& p) {
  const size_t elem = p.x_dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return size_t(fused_add_norm_bwd_cpu_partitions(p)) * 2 * size_t(p.cols) * elem;
}

void fused_add_norm_bwd_cpu_partition(const FusedAddNormBwdParams& p, int64_t partition) {
  MMM_CPU_CALL(bwd_partition, p, partition);
}

void fused_add_norm_bwd_cpu_finalize(const FusedAddNormBwdParams& p, int64_t col_begin, int64_t col_end) {
  MMM_CPU_CALL(bwd_finalize, p, col_begin, col_end);
}

}  // namespace mmm
