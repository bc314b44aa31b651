// The block GEMM on the CPU (block_diag_matmul_cpu_impl.h), compiled for baseline x86-64 / any
// other CPU and for AVX2 + FMA + F16C, picked at run time (see fused_add_norm_cpu.cpp for why
// the target pragma comes after every shared header).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "block_diag_matmul/params.h"
#include "core/cpu_features.h"
#include "core/numeric.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mmm {

namespace base {
#include "block_diag_matmul/block_diag_matmul_cpu_impl.h"
}  // namespace base

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define MMM_CPU_F16C 1
namespace avx2 {
#include "block_diag_matmul/block_diag_matmul_cpu_impl.h"
}  // namespace avx2
#undef MMM_CPU_F16C
#pragma GCC pop_options
#endif

int64_t block_gemm_cpu_tasks(const BlockGemm& g) { return g.batch * ceil_div(g.m, kBlockGemmCpuRows); }

void block_gemm_cpu(const BlockGemm& g, int64_t task_begin, int64_t task_end) {
#if defined(__x86_64__)
  if (cpu_has_avx2_fma_f16c()) return avx2::run_tasks(g, task_begin, task_end);
#endif
  base::run_tasks(g, task_begin, task_end);
}

}  // namespace mmm
