// The block GEMM on the CPU (block_diag_matmul_cpu_impl.h), compiled per instruction set and
// picked at run time (core/cpu_variants.h).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "block_diag_matmul/params.h"
#include "core/numeric.h"

#define MMM_CPU_IMPL "block_diag_matmul/block_diag_matmul_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

int64_t block_gemm_cpu_tasks(const BlockGemm& g) {
  return ceil_div(g.batch, block_gemm_cpu_group(g)) * ceil_div(g.m, kBlockGemmCpuRows);
}

void block_gemm_cpu(const BlockGemm& g, int64_t task_begin, int64_t task_end) {
  MMM_CPU_VARIANT(run_tasks, g, task_begin, task_end);
}

}  // namespace mmm
