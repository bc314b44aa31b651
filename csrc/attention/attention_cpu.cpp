// fused_attention on the CPU: the FlashAttention algorithm of the CUDA kernels, tiled for caches
// (attention_cpu_impl.h), compiled three times - baseline x86-64 / any other CPU (4-lane SSE2
// vectors), AVX2 + FMA + F16C (8 lanes) and AVX-512 (16 lanes) - and picked at run time. The
// caller parallelises over the independent tasks each entry point names (params.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention/params.h"
#include "core/numeric.h"

#define MMM_CPU_IMPL "attention/attention_cpu_impl.h"
#include "core/cpu_variants.h"

namespace mmm {

// Every variant tiles alike (64 x 64) but pads D to its own vector width, so a forward and its
// backward must run the same variant: the choice is made once per process (cpu_features.h).
#define MMM_ATTENTION_CPU_CALL(fn, ...) MMM_CPU_VARIANT(fn, __VA_ARGS__)

int64_t attention_fwd_cpu_tasks(const AttentionFwdParams& p) { return base::fwd_tasks(p); }

void attention_fwd_cpu(const AttentionFwdParams& p, int64_t task_begin, int64_t task_end) {
  MMM_ATTENTION_CPU_CALL(fwd, p, task_begin, task_end);
}

AttentionBwdCpuPlan attention_bwd_cpu_plan(const AttentionBwdParams& p, int num_threads) {
  return MMM_ATTENTION_CPU_CALL(bwd_plan, p, num_threads);
}

void attention_bwd_cpu(const AttentionBwdParams& p, const AttentionBwdCpuPlan& plan, int phase,
                       int64_t task_begin, int64_t task_end) {
  MMM_ATTENTION_CPU_CALL(bwd, p, plan, phase, task_begin, task_end);
}

}  // namespace mmm
