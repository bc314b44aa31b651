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
#include "core/cpu_features.h"
#include "core/numeric.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mmm {

namespace base {
#include "attention/attention_cpu_impl.h"
}  // namespace base

#if defined(__x86_64__)
// Everything up to here (std, numeric.h, ...) was compiled for the baseline target, so no
// AVX2/AVX-512 code can leak into an inline function the variants share.
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define MMM_CPU_F16C 1
namespace avx2 {
#include "attention/attention_cpu_impl.h"
}  // namespace avx2
#undef MMM_CPU_F16C
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define MMM_CPU_F16C 1
#define MMM_CPU_AVX512 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12: _mm512_undefined_* in the intrinsics
namespace avx512 {
#include "attention/attention_cpu_impl.h"
}  // namespace avx512
#pragma GCC diagnostic pop
#undef MMM_CPU_AVX512
#undef MMM_CPU_F16C
#pragma GCC pop_options

namespace {
bool attention_cpu_has_avx512() {
  static const bool yes = cpu_has_avx2_fma_f16c() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}
}  // namespace

// Every variant tiles alike (64 x 64) but pads D to its own vector width, so a forward and its
// backward must run the same variant: the choice is made once per process.
#define MMM_ATTENTION_CPU_CALL(fn, ...)                                   \
  (attention_cpu_has_avx512()  ? avx512::fn(__VA_ARGS__)                \
   : cpu_has_avx2_fma_f16c()   ? avx2::fn(__VA_ARGS__)                  \
                               : base::fn(__VA_ARGS__))
#else
#define MMM_ATTENTION_CPU_CALL(fn, ...) base::fn(__VA_ARGS__)
#endif

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
