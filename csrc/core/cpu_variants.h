// Compiles a CPU kernel's implementation once per instruction set, in one translation unit:
// baseline (x86-64 SSE2, or whatever else this is built for), AVX2 + FMA + F16C, and AVX-512
// (F/BW/DQ/VL), in namespaces base, avx2 and avx512, then MMM_CPU_VARIANT(fn, args...) calls
// the best one the machine runs. A portable wheel thus still runs at the machine's speed.
//
//   #define MMM_CPU_IMPL "op/op_cpu_impl.h"   // the implementation: no include guard, no includes
//   #include "core/cpu_variants.h"            // at file scope, after every header the
//                                             // implementation needs: defines mmm::base,
//                                             // mmm::avx2, mmm::avx512
//
// Everything included before this point is compiled for the baseline target only, so no AVX2 or
// AVX-512 instruction can leak into an inline function the variants share (the linker would
// keep one copy of it for all). Inside an implementation, MMM_CPU_F16C / MMM_CPU_AVX512 say
// which intrinsics this copy may use, and MMM_CPU_VECTOR_BYTES its vector register width (64,
// 32, or 16 for the baseline's SSE2 / NEON), for GCC vector types.
// Each copy has its own scalar fp16/bf16 conversions, widen / narrow (core/cpu_convert.h).
// No include guard: one use per translation unit.
#include <cstdint>
#include <type_traits>

#include "core/cpu_features.h"
#include "core/numeric.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mmm {

#define MMM_CPU_VECTOR_BYTES 16
namespace base {
#include "core/cpu_convert.h"
#include MMM_CPU_IMPL
}  // namespace base
#undef MMM_CPU_VECTOR_BYTES

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define MMM_CPU_F16C 1
#define MMM_CPU_VECTOR_BYTES 32
namespace avx2 {
#include "core/cpu_convert.h"
#include MMM_CPU_IMPL
}  // namespace avx2
#undef MMM_CPU_VECTOR_BYTES
#undef MMM_CPU_F16C
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define MMM_CPU_F16C 1
#define MMM_CPU_AVX512 1
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12: _mm512_undefined_* in the intrinsics
#define MMM_CPU_VECTOR_BYTES 64
namespace avx512 {
#include "core/cpu_convert.h"
#include MMM_CPU_IMPL
}  // namespace avx512
#undef MMM_CPU_VECTOR_BYTES
#pragma GCC diagnostic pop
#undef MMM_CPU_AVX512
#undef MMM_CPU_F16C
#pragma GCC pop_options

#endif  // __x86_64__

}  // namespace mmm

#if defined(__x86_64__)
#define MMM_CPU_VARIANT(fn, ...)                                          \
  (::mmm::cpu_has_avx512() ? ::mmm::avx512::fn(__VA_ARGS__)               \
   : ::mmm::cpu_has_avx2_fma_f16c() ? ::mmm::avx2::fn(__VA_ARGS__)        \
                                    : ::mmm::base::fn(__VA_ARGS__))
#else
#define MMM_CPU_VARIANT(fn, ...) ::mmm::base::fn(__VA_ARGS__)
#endif
