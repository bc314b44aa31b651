// The fused Monarch forward's CPU twin (monarch_fused_cpu_impl.h), compiled per instruction set
// and picked at run time (core/cpu_variants.h).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "block_diag_matmul/monarch_fused.h"
#include "core/numeric.h"

#define MMM_CPU_IMPL "block_diag_matmul/monarch_fused_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

void monarch_fused_cpu(const MonarchFused& f, const MonarchFusedPlan& plan, int64_t task_begin, int64_t task_end) {
  MMM_CPU_VARIANT(monarch_fused_tasks, f, plan, task_begin, task_end);
}

}  // namespace mmm
